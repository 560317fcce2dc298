//! Rules fire after applied events: their actions become follow-up events, audited as the rule's.

use std::time::Duration;

use automation_shared::testing::TestEnv;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event};

async fn apply(env: &TestEnv, event_type: &str, data: Value) -> String {
    let e = event(event_type, data);
    env.publish_structured(&e).await;
    let id = e["id"].as_str().expect("id").to_string();
    assert_eq!(env.wait_processed(&id).await, "applied", "{event_type}");
    id
}

async fn status(env: &TestEnv, event_id: &str) -> automation_shared::db::events::EventStatus {
    let mut conn = env.pool.acquire().await.expect("conn");
    automation_shared::db::events::status(&mut conn, event_id, None).await.expect("status")
}

#[tokio::test]
async fn a_rule_auto_approves_small_requests_as_itself_and_says_why_it_passed_on_others() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let (workflow, rule) = (Uuid::new_v4(), Uuid::new_v4());
    apply(&env, "workflow.created", json!({"workflowId": workflow, "name": "Office"})).await;
    apply(
        &env,
        "rule.upserted",
        json!({"id": rule, "name": "small purchases", "on": "approval.requested", "when": "event.data.amount < 100",
               "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "small purchase"}]}),
    )
    .await;

    let (small, large) = (Uuid::new_v4(), Uuid::new_v4());
    let requested_small = apply(&env, "approval.requested", json!({"approvalId": small, "workflowId": workflow, "title": "Pens", "amount": 40, "requesterId": Uuid::new_v4()})).await;
    let requested_large = apply(&env, "approval.requested", json!({"approvalId": large, "workflowId": workflow, "title": "Desk", "amount": 900, "requesterId": Uuid::new_v4()})).await;

    // The small one is approved by the rule, through a follow-up event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state: (String, Option<String>) = sqlx::query_as("select status, decided_by from approvals where id = ?")
            .bind(small.to_string())
            .fetch_one(&env.pool)
            .await
            .expect("row");
        if state.0 == "APPROVED" {
            assert_eq!(state.1, Some(format!("rule:{rule}")));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rule did not approve it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (actor, actor_type): (String, String) =
        sqlx::query_as("select actor_id, actor_type from audit_log where entity = 'approval' and entity_id = ? and action = 'approval.approved'")
            .bind(small.to_string())
            .fetch_one(&env.pool)
            .await
            .expect("the decision is audited");
    assert_eq!((actor.as_str(), actor_type.as_str()), (rule.to_string().as_str(), "rule"));
    assert_eq!(
        env.count_bound(
            "select count(*) from audit_log where action = 'rule.fired' and entity_id = ?",
            &rule.to_string()
        )
        .await,
        1
    );

    let fired = status(&env, &requested_small).await;
    let evaluations = fired.rules.expect("evaluations kept");
    assert_eq!(evaluations[0]["matched"], true);
    assert!(
        evaluations[0]["actions"][0].as_str().unwrap_or_default().starts_with("approval.decide → approval.decided"),
        "{evaluations}"
    );
    // The notification leaves the outbox just after the commit the loop above saw.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let approved = loop {
        if let Some(approved) = tap.all().into_iter().find(|n| n["type"] == "approval.approved") {
            break approved;
        }
        assert!(tokio::time::Instant::now() < deadline, "approval.approved is announced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let fired_notice = tap.all().into_iter().find(|n| n["type"] == "rule.fired").expect("rule.fired");
    assert_eq!(fired_notice["causationid"], requested_small);
    assert_eq!(approved["data"]["reason"], "small purchase");
    assert_eq!(approved["correlationid"], requested_small, "the chain keeps its correlation");

    // The large one stays PENDING, and its status says why the rule did not match.
    let passed = status(&env, &requested_large).await;
    let evaluation = &passed.rules.expect("evaluations kept")[0];
    assert_eq!(evaluation["matched"], false);
    assert_eq!(evaluation["reason"], "`event.data.amount < 100` is false");
    assert_eq!(evaluation["ruleName"], "small purchases");
    let status: String = sqlx::query_scalar("select status from approvals where id = ?")
        .bind(large.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(status, "PENDING");
}

#[tokio::test]
async fn a_rule_loop_stops_at_depth_eight() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    apply(
        &env,
        "rule.upserted",
        json!({"name": "echo", "on": "audit.recorded", "when": "event.data.entity == 'loop'",
               "then": [{"type": "audit.note", "action": "again"}]}),
    )
    .await;
    apply(&env, "audit.recorded", json!({"entity": "loop", "entityId": "1", "action": "start"})).await;
    let refused = env
        .wait_count("select count(*) from inbox where reason_code = 'chain_too_deep'", 1, Duration::from_secs(30))
        .await;
    assert_eq!(refused, 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.count("select count(*) from audit_log where entity = 'loop' and action = 'again'").await,
        8,
        "depths 1 to 8 applied"
    );
    assert_eq!(
        env.count("select count(*) from inbox where reason_code = 'chain_too_deep'").await,
        1,
        "depth 9 refused, and the chain ended"
    );
    let depth: u32 = sqlx::query_scalar("select chain_depth from inbox where reason_code = 'chain_too_deep'")
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(depth, 9);
}

#[tokio::test]
async fn a_rule_over_budget_on_an_attacker_sized_event_fails_as_such_and_holds_nothing_up() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let workflow = Uuid::new_v4();
    apply(&env, "workflow.created", json!({"workflowId": workflow, "name": "Office"})).await;
    apply(
        &env,
        "rule.upserted",
        json!({"name": "duplicate items", "on": "approval.requested",
               "when": "event.data.details.items.exists(a, event.data.details.items.exists(b, a != b && a == b))",
               "then": [{"type": "audit.note", "action": "duplicates"}]}),
    )
    .await;
    // 3,000 items (about 20 KiB, well inside the message limit): 9 million steps, seconds of CPU
    // if it ran.
    let items: Vec<String> = (0..3000).map(|i| format!("item-{i}")).collect();
    let started = std::time::Instant::now();
    let big = apply(
        &env,
        "approval.requested",
        json!({"workflowId": workflow, "title": "Many", "requesterId": Uuid::new_v4(), "details": {"items": items}}),
    )
    .await;
    let after = apply(&env, "audit.recorded", json!({"entity": "x", "entityId": "1", "action": "after"})).await;
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    let evaluation = &status(&env, &big).await.rules.expect("evaluations kept")[0];
    assert_eq!(evaluation["matched"], false);
    assert!(evaluation["reason"].as_str().unwrap_or_default().contains("over budget"), "{evaluation}");
    assert_eq!(status(&env, &after).await.status, automation_shared::events::outcome::EventState::Processed);
}

/// On a multi-threaded runtime (as in production) a large event's rules run in `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_over_a_large_event_within_budget_is_evaluated_on_a_production_runtime() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let workflow = Uuid::new_v4();
    apply(&env, "workflow.created", json!({"workflowId": workflow, "name": "Office"})).await;
    apply(
        &env,
        "rule.upserted",
        json!({"name": "has the last item", "on": "approval.requested",
               "when": "event.data.details.items.exists(x, x == 'item-1999')",
               "then": [{"type": "audit.note", "action": "found"}]}),
    )
    .await;
    let items: Vec<String> = (0..2000).map(|i| format!("item-{i}")).collect();
    let big = apply(
        &env,
        "approval.requested",
        json!({"workflowId": workflow, "title": "Many", "requesterId": Uuid::new_v4(), "details": {"items": items}}),
    )
    .await;
    let evaluation = &status(&env, &big).await.rules.expect("evaluations kept")[0];
    assert_eq!(evaluation["matched"], true, "{evaluation}");
}
