//! Business refusals: recorded, audited as rejected, announced as `event.rejected`, acked, and
//! never retried or dead-lettered.

use std::time::Duration;

use automation_shared::testing::{NotificationTap, TestEnv};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event};

async fn send(env: &TestEnv, event_type: &str, data: Value) -> String {
    let e = event(event_type, data);
    env.publish_structured(&e).await;
    e["id"].as_str().expect("id").to_string()
}

async fn applied(env: &TestEnv, event_type: &str, data: Value) {
    let id = send(env, event_type, data).await;
    assert_eq!(env.wait_processed(&id).await, "applied", "{event_type}");
}

async fn refused(env: &TestEnv, tap: &NotificationTap, event: Value, code: &str) {
    let id = event["id"].as_str().expect("id").to_string();
    env.publish_structured(&event).await;
    assert_eq!(env.wait_processed(&id).await, "rejected", "{event}");
    let reason_code: Option<String> = sqlx::query_scalar("select reason_code from inbox where event_id = ?")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(reason_code.as_deref(), Some(code), "{event}");
    let notice = tap.wait_caused_by(&id).await;
    assert_eq!(notice["type"], "event.rejected");
    assert_eq!(notice["data"]["eventId"], id);
    assert_eq!(notice["data"]["type"], event["type"]);
    assert_eq!(notice["data"]["code"], code);
    assert!(!notice["data"]["reason"].as_str().unwrap_or_default().is_empty());
    assert_eq!(
        env.count_bound("select count(*) from audit_log where event_id = ? and action = 'rejected'", &id).await,
        1,
        "audited as rejected"
    );
}

#[tokio::test]
async fn each_illegal_move_is_refused_with_event_rejected() {
    let mut env = TestEnv::new().await;
    // A `not_found` is final once the entity had time to appear; a short wait keeps this quick.
    env.config.worker.entity_wait_ms = 1_000;
    let worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let (draft, active, approval, requester) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    applied(&env, "workflow.created", json!({"workflowId": draft, "name": "draft", "status": "DRAFT"})).await;
    applied(&env, "workflow.created", json!({"workflowId": active, "name": "active"})).await;

    // Workflows: DRAFT cannot pause; nothing leaves COMPLETED; a stale version is refused.
    refused(
        &env,
        &tap,
        event("workflow.status_changed", json!({"workflowId": draft, "status": "PAUSED"})),
        "invalid_transition",
    )
    .await;
    refused(
        &env,
        &tap,
        event("workflow.status_changed", json!({"workflowId": draft, "status": "COMPLETED"})),
        "invalid_transition",
    )
    .await;
    refused(
        &env,
        &tap,
        event("workflow.status_changed", json!({"workflowId": active, "status": "PAUSED", "expectedVersion": 7})),
        "version_conflict",
    )
    .await;
    refused(
        &env,
        &tap,
        event("workflow.status_changed", json!({"workflowId": Uuid::new_v4(), "status": "PAUSED"})),
        "not_found",
    )
    .await;
    refused(&env, &tap, event("workflow.created", json!({"workflowId": active, "name": "again"})), "already_exists")
        .await;

    // Approvals only on ACTIVE workflows.
    refused(
        &env,
        &tap,
        event("approval.requested", json!({"workflowId": draft, "title": "t", "requesterId": requester})),
        "workflow_not_active",
    )
    .await;
    applied(
        &env,
        "approval.requested",
        json!({"approvalId": approval, "workflowId": active, "title": "t", "requesterId": requester}),
    )
    .await;

    // Nobody decides their own request.
    let mut own = event("approval.decided", json!({"approvalId": approval, "status": "APPROVED"}));
    own["actorid"] = json!(requester.to_string());
    refused(&env, &tap, own, "forbidden").await;
    refused(
        &env,
        &tap,
        event("approval.decided", json!({"approvalId": approval, "status": "APPROVED", "expectedVersion": 2})),
        "version_conflict",
    )
    .await;
    applied(&env, "approval.decided", json!({"approvalId": approval, "status": "REJECTED", "expectedVersion": 1}))
        .await;
    // REJECTED is final.
    refused(
        &env,
        &tap,
        event("approval.decided", json!({"approvalId": approval, "status": "APPROVED"})),
        "invalid_transition",
    )
    .await;
    refused(
        &env,
        &tap,
        event("approval.decided", json!({"approvalId": Uuid::new_v4(), "status": "APPROVED"})),
        "not_found",
    )
    .await;

    // An invalid rule is refused with the compiler's message.
    refused(
        &env,
        &tap,
        event(
            "rule.upserted",
            json!({"name": "broken", "on": "approval.requested", "when": "event.data.amount <",
                                       "then": [{"type": "audit.note", "action": "x"}]}),
        ),
        "invalid_rule",
    )
    .await;
    // A rule chain deeper than 8 stops.
    let mut deep = event("audit.recorded", json!({"entity": "x", "entityId": "1", "action": "loop"}));
    deep["chaindepth"] = json!(9);
    refused(&env, &tap, deep, "chain_too_deep").await;
    refused(&env, &tap, event("automation.requested", json!({"automation": "no.such_task"})), "unknown_automation")
        .await;

    // State unchanged where refused; nothing dead-lettered or left to retry.
    let status: String = sqlx::query_scalar("select status from workflows where id = ?")
        .bind(draft.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(status, "DRAFT");
    let status: String = sqlx::query_scalar("select status from approvals where id = ?")
        .bind(approval.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(status, "REJECTED");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    assert_eq!(env.count("select count(*) from event_attempts").await, 0);
    worker.stop().await.expect("clean stop");
}
