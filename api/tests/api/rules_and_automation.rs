//! Rules, automations and insights over HTTP.

use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApi, TestUser, TestWorker, json};

async fn setup() -> (TestEnv, TestApi, TestWorker, TestUser) {
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    (env, api, worker, admin)
}

fn small_purchases() -> Value {
    json!({"name": "small purchases", "on": "approval.requested", "when": "event.data.amount < 100",
           "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "small"}]})
}

#[tokio::test]
async fn an_invalid_cel_rule_is_refused_with_the_compilers_message() {
    let (_env, api, _worker, admin) = setup().await;
    let mut rule = small_purchases();
    rule["when"] = json!("event.data.amount <");
    let (status, problem) =
        json(api.request(Method::POST, "/api/v1/rules", &admin.token).json(&rule).send().await.expect("answer")).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "when");
    assert!(!problem["errors"][0]["message"].as_str().unwrap_or_default().is_empty());
    rule["when"] = json!("request.amount < 3");
    let (status, problem) =
        json(api.request(Method::POST, "/api/v1/rules", &admin.token).json(&rule).send().await.expect("answer")).await;
    assert_eq!(status, 422);
    assert!(problem["errors"][0]["message"].as_str().unwrap_or_default().contains("unknown variable `request`"));
    let mut unknown = small_purchases();
    unknown["version"] = json!(7);
    let (status, problem) =
        json(api.request(Method::POST, "/api/v1/rules", &admin.token).json(&unknown).send().await.expect("answer"))
            .await;
    assert_eq!((status, problem["errors"][0]["field"].as_str()), (422, Some("version")));
    let viewer = api.user(Role::Viewer).await;
    let (status, _) = json(
        api.request(Method::POST, "/api/v1/rules", &viewer.token)
            .json(&small_purchases())
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn rules_are_written_through_events_and_dry_run_without_side_effects() {
    let (env, api, _worker, admin) = setup().await;
    let (status, rule) = json(
        api.request(Method::POST, "/api/v1/rules", &admin.token)
            .header("prefer", "wait=10")
            .json(&small_purchases())
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["version"], 1);
    let id = rule["id"].as_str().expect("id").to_string();

    let viewer = api.user(Role::Viewer).await;
    let (status, listed) =
        json(api.request(Method::GET, "/api/v1/rules", &viewer.token).send().await.expect("answer")).await;
    assert_eq!((status, listed.as_array().map(Vec::len)), (200, Some(1)));

    let workflow = Uuid::new_v4();
    let dry = |amount: f64| {
        api.request(Method::POST, "/api/v1/rules/test", &admin.token)
            .json(&json!({"ruleId": id, "event": {"type": "approval.requested",
                "data": {"workflowId": workflow, "title": "x", "amount": amount, "requesterId": Uuid::new_v4()}}}))
            .send()
    };
    let (status, run) = json(dry(40.0).await.expect("answer")).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["matched"], true);
    assert_eq!(run["actions"][0]["type"], "approval.decided");
    assert_eq!(run["actions"][0]["data"]["status"], "APPROVED");
    let (_, run) = json(dry(400.0).await.expect("answer")).await;
    assert_eq!(run["matched"], false);
    assert_eq!(run["evaluations"][0]["reason"], "`event.data.amount < 100` is false");
    assert_eq!(run["actions"], json!([]));
    // An unsaved rule can be tried too, and a bad one names its field.
    let (status, run) = json(
        api.request(Method::POST, "/api/v1/rules/test", &admin.token)
            .json(&json!({"rule": {"name": "n", "on": "approval.*", "when": "entity.status == 'PENDING'", "then": [{"type": "audit.note", "action": "seen"}]},
                          "event": {"type": "approval.requested", "data": {"workflowId": workflow, "title": "x", "requesterId": Uuid::new_v4()}}}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, run["matched"].as_bool()), (200, Some(true)), "{run}");
    assert_eq!(run["actions"][0]["type"], "audit.recorded");
    assert_eq!(env.count("select count(*) from inbox").await, 1, "a dry run publishes nothing");
    // An attacker-sized event against a nested comprehension is answered at once: over budget.
    let items: Vec<u32> = (0..3000).collect();
    let started = std::time::Instant::now();
    let (status, run) = json(
        api.request(Method::POST, "/api/v1/rules/test", &admin.token)
            .json(&json!({"rule": {"name": "n", "on": "approval.*",
                                   "when": "event.data.details.items.all(a, event.data.details.items.exists(b, b == a))",
                                   "then": [{"type": "audit.note", "action": "seen"}]},
                          "event": {"type": "approval.requested", "data": {"workflowId": workflow, "title": "x",
                                    "requesterId": Uuid::new_v4(), "details": {"items": items}}}}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, run["matched"].as_bool()), (200, Some(false)), "{run}");
    assert!(run["evaluations"][0]["reason"].as_str().unwrap_or_default().contains("over budget"), "{run}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "took {:?}", started.elapsed());

    let mut changed = small_purchases();
    changed["when"] = json!("event.data.amount < 50");
    let (status, replaced) = json(
        api.request(Method::PUT, &format!("/api/v1/rules/{id}"), &admin.token)
            .header("prefer", "wait=10")
            .json(&changed)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, replaced["version"].as_u64()), (200, Some(2)), "{replaced}");
    let (status, _) = json(
        api.request(Method::DELETE, &format!("/api/v1/rules/{id}"), &admin.token)
            .header("prefer", "wait=10")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api.request(Method::GET, &format!("/api/v1/rules/{id}"), &admin.token).send().await.expect("answer").status()
        != 404
    {
        assert!(tokio::time::Instant::now() < deadline, "the rule is deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_automation_is_started_followed_and_cancelled_over_http() {
    let (_env, api, _worker, admin) = setup().await;
    let service = api.user(Role::Service).await;
    let (status, accepted) = json(
        api.request(Method::POST, "/api/v1/automation/execute", &service.token)
            .json(&json!({"automation": "insights.recompute", "params": {"windowDays": 30}}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let run_url = accepted["runUrl"].as_str().expect("runUrl").to_string();
    assert!(run_url.ends_with(accepted["runId"].as_str().expect("runId")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, run) =
            json(api.request(Method::GET, &run_url, &service.token).send().await.expect("answer")).await;
        if status == 200 && run["state"] == "succeeded" {
            assert_eq!(run["result"]["insights"].as_u64(), Some(0), "nothing to say about an empty database");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, later) = json(
        api.request(Method::POST, "/api/v1/automation/execute", &admin.token)
            .header("prefer", "wait=10")
            .json(&json!({"automation": "insights.recompute", "countdownSeconds": 3600}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, later["state"].as_str()), (200, Some("scheduled")), "{later}");
    let id = later["id"].as_str().expect("id");
    let (status, cancelled) = json(
        api.request(Method::POST, &format!("/api/v1/automation/runs/{id}/cancel"), &admin.token)
            .header("prefer", "wait=10")
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, cancelled["state"].as_str()), (200, Some("cancelled")));
    let (status, _) = json(
        api.request(Method::POST, &format!("/api/v1/automation/runs/{id}/cancel"), &admin.token)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 409, "a finished run cannot be cancelled");
    let (status, runs) = json(
        api.request(Method::GET, "/api/v1/automation/runs?state=cancelled", &admin.token).send().await.expect("answer"),
    )
    .await;
    assert_eq!((status, runs.as_array().map(Vec::len)), (200, Some(1)));
    let (status, problem) = json(
        api.request(Method::POST, "/api/v1/automation/execute", &admin.token)
            .header("prefer", "wait=10")
            .json(&json!({"automation": "no.such_task"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!((status, problem["code"].as_str()), (422, Some("unknown_automation")));
}

#[tokio::test]
async fn a_rule_the_insights_suggest_is_accepted_by_the_rules_api() {
    let (env, api, _worker, admin) = setup().await;
    let workflow = Uuid::new_v4();
    sqlx::query("insert into workflows (id, name, status) values (?, 'Office', 'ACTIVE')")
        .bind(workflow.to_string())
        .execute(&env.pool)
        .await
        .expect("seed");
    for i in 0..20 {
        sqlx::query(
            "insert into approvals (id, workflow_id, title, amount, currency, requester_id, status, decided_by, created_at, decided_at) \
             values (?, ?, 'pens', ?, 'EUR', ?, 'APPROVED', 'alice', now(6) - interval 2 day, now(6) - interval 1 day)",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(workflow.to_string())
        .bind(10 + i)
        .bind(Uuid::new_v4().to_string())
        .execute(&env.pool)
        .await
        .expect("seed");
    }
    let (status, run) = json(
        api.request(Method::POST, "/api/v1/automation/execute", &admin.token)
            .json(&json!({"automation": "insights.recompute"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 202, "{run}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let suggested = loop {
        let (_, insights) =
            json(api.request(Method::GET, "/aiInsights", &admin.token).send().await.expect("answer")).await;
        if let Some(candidate) = insights.as_array().into_iter().flatten().find(|i| i["kind"] == "rule_candidate") {
            break candidate["suggestedRule"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no rule candidate: {insights}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, stored) = json(
        api.request(Method::POST, "/api/v1/rules", &admin.token)
            .header("prefer", "wait=10")
            .json(&suggested)
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "the suggestion is accepted as it is: {stored}");
    assert_eq!(stored["on"], "approval.requested");
}
