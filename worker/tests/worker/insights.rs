//! `insights.recompute` over a seeded data set: every figure equals what this test works out by
//! hand (in the comments), and the suggested rule is one the system accepts.

use std::time::Duration;

use automation_shared::testing::TestEnv;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event};

struct Seed<'a> {
    env: &'a TestEnv,
    base: DateTime<Utc>,
}

impl Seed<'_> {
    async fn workflow(&self, name: &str, sla: u32) -> Uuid {
        let id = Uuid::new_v4();
        sqlx::query("insert into workflows (id, name, status, approval_sla_hours) values (?, ?, 'ACTIVE', ?)")
            .bind(id.to_string())
            .bind(name)
            .bind(sla)
            .execute(&self.env.pool)
            .await
            .expect("workflow");
        id
    }

    /// An approval created `created_hours_ago`, decided after `hours` (or still pending).
    async fn approval(
        &self,
        workflow: Uuid,
        amount: f64,
        status: &str,
        by: Option<&str>,
        created_hours_ago: f64,
        hours: Option<f64>,
    ) -> Uuid {
        let id = Uuid::new_v4();
        let created = self.base - chrono::Duration::milliseconds((created_hours_ago * 3_600_000.0) as i64);
        let decided = hours.map(|h| created + chrono::Duration::milliseconds((h * 3_600_000.0) as i64));
        sqlx::query(
            "insert into approvals (id, workflow_id, title, amount, currency, requester_id, status, decided_by, created_at, updated_at, decided_at) \
             values (?, ?, 'seeded', ?, 'EUR', ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.to_string())
        .bind(workflow.to_string())
        .bind(amount)
        .bind(Uuid::new_v4().to_string())
        .bind(status)
        .bind(by)
        .bind(created)
        .bind(created)
        .bind(decided)
        .execute(&self.env.pool)
        .await
        .expect("approval");
        id
    }
}

#[tokio::test]
async fn insights_over_a_seeded_data_set_equal_the_figures_worked_out_by_hand() {
    let env = TestEnv::new().await;
    let seed = Seed { env: &env, base: Utc::now() };
    let office = seed.workflow("Office", 24).await;
    let travel = seed.workflow("Travel", 48).await;
    // Office: 20 requests of 10..29 EUR, all approved by alice after 1..20 hours.
    let mut office_ids = Vec::new();
    for i in 0..20 {
        office_ids
            .push(seed.approval(office, 10.0 + i as f64, "APPROVED", Some("alice"), 240.0, Some(1.0 + i as f64)).await);
    }
    // Travel: 6 requests of 500 approved by bob after 100 h; 4 of 900 rejected by alice after 2 h.
    let mut bob = Vec::new();
    for _ in 0..6 {
        bob.push(seed.approval(travel, 500.0, "APPROVED", Some("bob"), 240.0, Some(100.0)).await);
    }
    for _ in 0..4 {
        seed.approval(travel, 900.0, "REJECTED", Some("alice"), 240.0, Some(2.0)).await;
    }
    // Open: a 5,000 EUR office request pending for 48 h (past its 24 h SLA), and a travel one for 1 h.
    let outlier = seed.approval(office, 5000.0, "PENDING", None, 48.0, None).await;
    seed.approval(travel, 700.0, "PENDING", None, 1.0, None).await;

    let _worker = TestWorker::start(&env.config).await;
    let run = Uuid::new_v4();
    let e = event("automation.requested", json!({"runId": run, "automation": "insights.recompute"}));
    env.publish_structured(&e).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while env
        .count_bound("select count(*) from automation_runs where id = ? and state = 'succeeded'", &run.to_string())
        .await
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "the recompute did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = automation_shared::db::insights::latest(&env.pool).await.expect("insights");
    let by_kind = |kind: &str| -> Vec<Value> {
        found.iter().filter(|i| i.kind == kind).map(|i| serde_json::to_value(i).expect("json")).collect()
    };
    let close = |a: &Value, b: f64| (a.as_f64().unwrap_or(f64::NAN) - b).abs() < 1e-6;

    // SLA: only the outlier has waited longer than its workflow's SLA.
    let sla = by_kind("sla_breach");
    assert_eq!(sla.len(), 1);
    assert_eq!(sla[0]["evidence"]["count"], 1);
    assert_eq!(sla[0]["evidence"]["approvals"][0]["approvalId"], outlier.to_string());

    // Turnaround: the 30 decisions sorted are 1, 2×5, 3..20, 100×6. Rank 14.5 of 0..29 lies between
    // 11 and 12: p50 = 11.5. Ranks 26.1 and 27.55 fall among the 100s: p90 = p95 = 100.
    let turnaround = &by_kind("turnaround")[0]["evidence"];
    assert_eq!(turnaround["decisions"], 30);
    assert!(close(&turnaround["p50Hours"], 11.5), "{turnaround}");
    assert!(close(&turnaround["p90Hours"], 100.0));
    assert!(close(&turnaround["p95Hours"], 100.0));
    // Per workflow: Office 1..20 → 10.5; Travel 2, 2, 2, 2, 100×6 → ranks 4 and 5 are both 100 → 100.
    let per: Vec<(String, f64)> = turnaround["perWorkflow"]
        .as_array()
        .expect("array")
        .iter()
        .map(|w| (w["name"].as_str().unwrap_or_default().to_string(), w["p50Hours"].as_f64().unwrap_or_default()))
        .collect();
    assert!(per.contains(&("Office".into(), 10.5)) && per.contains(&("Travel".into(), 100.0)), "{per:?}");
    assert_eq!(turnaround["approvalIds"].as_array().map(Vec::len), Some(30));

    // Bottlenecks: bob's median 100 h > 2 × 11.5 h; alice's (1, 2×5, 3..20 → 8.5 h) is not.
    let slow = by_kind("approver_bottleneck");
    assert_eq!(slow.len(), 1);
    let evidence = &slow[0]["evidence"];
    assert_eq!(evidence["approverId"], "bob");
    assert_eq!(evidence["decisions"], 6);
    assert!(close(&evidence["medianHours"], 100.0) && close(&evidence["teamMedianHours"], 11.5));
    let mut ids: Vec<String> = evidence["approvalIds"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    ids.sort();
    let mut expected: Vec<String> = bob.iter().map(Uuid::to_string).collect();
    expected.sort();
    assert_eq!(ids, expected, "the figure names its rows");

    // Anomalies, Office EUR: 10..29 and 5000 → median 20; deviations 0, 1×2 … 9×2, 10, 4980 →
    // MAD 5; z(5000) = 0.6745 × 4980 / 5 = 671.802; z(10) = −1.349, not flagged. Travel EUR
    // (500×6, 900×4, 700) has MAD 0 and is skipped.
    let unusual = by_kind("anomalous_amount");
    assert_eq!(unusual.len(), 1);
    let evidence = &unusual[0]["evidence"];
    assert!(close(&evidence["median"], 20.0) && close(&evidence["mad"], 5.0), "{evidence}");
    assert_eq!(evidence["anomalies"].as_array().map(Vec::len), Some(1));
    assert_eq!(evidence["anomalies"][0]["approvalId"], outlier.to_string());
    assert!(close(&evidence["anomalies"][0]["robustZ"], 671.802));

    // Rule candidate: Office's 20 decisions up to 100 were all approved; Travel has none up to 100.
    let candidates = by_kind("rule_candidate");
    assert_eq!(candidates.len(), 1);
    let evidence = &candidates[0]["evidence"];
    assert_eq!(evidence["workflowId"], office.to_string());
    assert!(close(&evidence["upTo"], 100.0));
    assert_eq!((evidence["decisions"].as_u64(), evidence["approved"].as_u64()), (Some(20), Some(20)));
    let rule: automation_shared::rules::RuleDefinition =
        serde_json::from_value(candidates[0]["suggestedRule"].clone()).expect("a rule the system accepts");
    rule.check().expect("it compiles");
    assert_eq!(office_ids.len(), 20);
}
