//! Every event type, in each of the three shapes Spring sends, gives its effect in MySQL, one
//! audit record and one notification; duplicates give nothing more.

use std::time::Duration;

use automation_shared::testing::{NotificationTap, TestEnv};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestWorker, event, http_get, plain_event_id};

#[derive(Clone, Copy, Debug)]
enum Shape {
    Structured,
    Binary(&'static str),
    Plain,
}

/// Publishes `event` in `shape`; returns the event id the worker will see.
async fn send(env: &TestEnv, shape: Shape, event: &Value) -> String {
    let event_type = event["type"].as_str().expect("type");
    match shape {
        Shape::Structured => {
            env.publish_structured(event).await;
            event["id"].as_str().expect("id").to_string()
        }
        Shape::Binary(prefix) => {
            env.publish_binary(event, prefix).await;
            event["id"].as_str().expect("id").to_string()
        }
        Shape::Plain => {
            env.publish_plain(event_type, &event["data"]).await;
            plain_event_id(event_type, &event["data"].to_string())
        }
    }
}

/// Sends one event and checks: applied, exactly one audit record, the expected notification.
async fn apply(
    env: &TestEnv,
    tap: &NotificationTap,
    shape: Shape,
    event_type: &str,
    data: Value,
    notification: &str,
) -> Value {
    let id = send(env, shape, &event(event_type, data)).await;
    assert_eq!(env.wait_processed(&id).await, "applied", "{event_type} in {shape:?}");
    assert_eq!(
        env.count_bound("select count(*) from audit_log where event_id = ?", &id).await,
        1,
        "one audit record for {event_type}"
    );
    let sent = tap.wait_caused_by(&id).await;
    assert_eq!(sent["type"], notification, "{event_type} in {shape:?}");
    assert_eq!(sent["source"], "/automation-engine/worker");
    assert_eq!(sent["specversion"], "1.0");
    sent
}

async fn every_event_type_in(shape: Shape, batch_size: usize) {
    let mut env = TestEnv::new().await;
    env.config.worker.batch_size = batch_size;
    let worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let (workflow, approval, rule, run) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let (requester, approver) = (Uuid::new_v4(), Uuid::new_v4());

    let sent = apply(
        &env,
        &tap,
        shape,
        "workflow.created",
        json!({"workflowId": workflow, "name": "Purchases", "approvalSlaHours": 24}),
        "workflow.created",
    )
    .await;
    assert_eq!(sent["data"]["status"], "ACTIVE");
    assert_eq!(sent["data"]["id"], workflow.to_string());

    let sent = apply(
        &env,
        &tap,
        shape,
        "workflow.status_changed",
        json!({"workflowId": workflow, "status": "PAUSED", "expectedVersion": 1}),
        "workflow.status_changed",
    )
    .await;
    assert_eq!(sent["data"]["version"], 2);
    apply(
        &env,
        &tap,
        shape,
        "workflow.status_changed",
        json!({"workflowId": workflow, "status": "ACTIVE"}),
        "workflow.status_changed",
    )
    .await;
    let row: (String, u32) = sqlx::query_as("select status, version from workflows where id = ?")
        .bind(workflow.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("workflow row");
    assert_eq!(row, ("ACTIVE".to_string(), 3));

    let sent = apply(
        &env,
        &tap,
        shape,
        "approval.requested",
        json!({"approvalId": approval, "workflowId": workflow, "title": "Laptop", "amount": 1299.99, "currency": "EUR",
               "requesterId": requester, "details": {"vendor": "ACME"}}),
        "approval.created",
    )
    .await;
    assert_eq!(sent["data"]["status"], "PENDING");
    assert_eq!(sent["data"]["amount"], 1299.99);

    let sent = apply(
        &env,
        &tap,
        shape,
        "approval.decided",
        json!({"approvalId": approval, "status": "APPROVED", "reason": "within budget", "actorId": approver.to_string()}),
        "approval.approved",
    )
    .await;
    assert_eq!(sent["data"]["status"], "APPROVED");
    assert_eq!(sent["data"]["decidedBy"], approver.to_string());
    let row: (String, Option<String>, f64) =
        sqlx::query_as("select status, reason, cast(amount as double) from approvals where id = ?")
            .bind(approval.to_string())
            .fetch_one(&env.pool)
            .await
            .expect("approval row");
    assert_eq!(row, ("APPROVED".to_string(), Some("within budget".to_string()), 1299.99));

    apply(
        &env,
        &tap,
        shape,
        "audit.recorded",
        json!({"entity": "invoice", "entityId": "inv-42", "action": "exported", "details": {"format": "pdf"}}),
        "audit.recorded",
    )
    .await;
    assert_eq!(
        env.count(
            "select count(*) from audit_log where entity = 'invoice' and entity_id = 'inv-42' and action = 'exported'"
        )
        .await,
        1
    );

    let sent = apply(
        &env,
        &tap,
        shape,
        "rule.upserted",
        json!({"id": rule, "name": "small purchases", "on": "approval.requested", "when": "event.data.amount < 100.0",
               "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "small"}]}),
        "rule.changed",
    )
    .await;
    assert_eq!(sent["data"]["version"], 1);
    assert_eq!(env.count_bound("select count(*) from rules where id = ?", &rule.to_string()).await, 1);
    apply(&env, &tap, shape, "rule.deleted", json!({"ruleId": rule}), "rule.changed").await;
    assert_eq!(env.count_bound("select count(*) from rules where id = ?", &rule.to_string()).await, 0);

    let sent = apply(
        &env,
        &tap,
        shape,
        "automation.requested",
        json!({"runId": run, "automation": "insights.recompute", "countdownSeconds": 3600}),
        "automation.scheduled",
    )
    .await;
    assert_eq!(sent["data"]["state"], "scheduled");
    apply(&env, &tap, shape, "automation.cancelled", json!({"runId": run}), "automation.cancelled").await;
    assert_eq!(
        env.count_bound("select count(*) from automation_runs where id = ? and state = 'cancelled'", &run.to_string())
            .await,
        1
    );

    // Exactly one notification per event, nothing extra after a pause.
    tap.settle().await;
    let notifications = tap.all();
    assert_eq!(notifications.len(), 10, "{notifications:#?}");
    let ids: std::collections::HashSet<_> = notifications.iter().map(|n| n["id"].clone()).collect();
    assert_eq!(ids.len(), 10, "notification ids are distinct");
    assert_eq!(env.count("select count(*) from outbox").await, 0, "the outbox is drained");

    let (status, body) = http_get(&worker.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("automation_worker_events_total"), "{body}");
    worker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn every_event_type_as_a_structured_cloud_event_is_applied_audited_and_announced() {
    every_event_type_in(Shape::Structured, 100).await;
}

#[tokio::test]
async fn every_event_type_as_a_binary_cloud_event_with_ce_underscore_headers_is_applied() {
    every_event_type_in(Shape::Binary("ce_"), 100).await;
}

#[tokio::test]
async fn every_event_type_as_a_binary_cloud_event_with_ce_dash_headers_is_applied() {
    every_event_type_in(Shape::Binary("ce-"), 100).await;
}

#[tokio::test]
async fn every_event_type_as_a_binary_cloud_event_with_cloud_events_colon_headers_is_applied() {
    every_event_type_in(Shape::Binary("cloudEvents:"), 100).await;
}

#[tokio::test]
async fn every_event_type_as_a_binary_cloud_event_with_cloud_events_underscore_headers_is_applied() {
    every_event_type_in(Shape::Binary("cloudEvents_"), 100).await;
}

#[tokio::test]
async fn every_event_type_as_plain_jackson_json_is_applied() {
    every_event_type_in(Shape::Plain, 100).await;
}

#[tokio::test]
async fn one_transaction_per_event_works_too() {
    every_event_type_in(Shape::Structured, 1).await;
}

#[tokio::test]
async fn the_same_event_delivered_five_times_is_applied_and_announced_once() {
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let workflow = Uuid::new_v4();
    let created = event("workflow.created", json!({"workflowId": workflow, "name": "Once"}));
    let audit_data = json!({"entity": "invoice", "entityId": "inv-7", "action": "sent"});
    for _ in 0..5 {
        env.publish_structured(&created).await;
        env.publish_plain("audit.recorded", &audit_data).await;
    }
    let created_id = created["id"].as_str().expect("id");
    let plain_id = plain_event_id("audit.recorded", &audit_data.to_string());
    env.wait_processed(created_id).await;
    env.wait_processed(&plain_id).await;
    // Let every copy reach the worker before counting.
    env.wait_count("select count(*) from inbox", 2, Duration::from_secs(5)).await;
    tap.wait_caused_by(created_id).await;
    tap.wait_caused_by(&plain_id).await;
    tap.settle().await;
    assert_eq!(env.count_bound("select count(*) from workflows where id = ?", &workflow.to_string()).await, 1);
    assert_eq!(env.count("select count(*) from audit_log where entity = 'invoice' and entity_id = 'inv-7'").await, 1);
    assert_eq!(env.count("select count(*) from audit_log").await, 2);
    assert_eq!(tap.caused_by(created_id).len(), 1);
    assert_eq!(tap.caused_by(&plain_id).len(), 1);
    assert_eq!(tap.all().len(), 2);
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    worker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn readiness_reports_its_dependencies_and_publishing_that_is_stuck() {
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let (status, body) = http_get(&worker.url("/readiness")).await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["dependencies"]["mysql"]["status"], "ok");
    assert_eq!(body["dependencies"]["rabbitmq"]["status"], "ok");
    assert_eq!(body["dependencies"]["publishing"]["status"], "ok");
    assert_eq!(body["outbox"]["rows"], 0);
    let (status, body) = http_get(&worker.url("/health")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // Publishing that is stuck is not ready, whatever the connection says: here a message in the
    // outbox that no relay can take (another's lease) for a minute.
    sqlx::query(
        "insert into outbox (message_id, destination, routing_key, body, created_at, lease_owner, lease_until) \
         values (?, 'events', 'audit.recorded', '{}', now(6) - interval 60 second, ?, now(6) + interval 1 hour)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(Uuid::new_v4().to_string())
    .execute(&env.pool)
    .await
    .expect("a stuck row");
    let (status, body) = http_get(&worker.url("/readiness")).await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["dependencies"]["publishing"]["status"], "unavailable", "{body}");
    assert!(body["dependencies"]["publishing"]["error"].as_str().unwrap_or("").contains("outbox"), "{body}");
    sqlx::query("delete from outbox").execute(&env.pool).await.expect("unstuck");
    let (status, body) = http_get(&worker.url("/readiness")).await;
    assert_eq!(status, 200, "{body}");
    worker.stop().await.expect("clean stop");
}

#[tokio::test]
async fn every_metric_has_help_and_a_type_and_promtool_finds_nothing_wrong() {
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let (_, before) = http_get(&worker.url("/metrics")).await;
    // The database-wide gauges are read as the worker starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut before = before;
    while !before.contains("automation_worker_dead_letters{state=\"dead\"} 0") {
        assert!(tokio::time::Instant::now() < deadline, "the dead-letter gauge:\n{before}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        before = http_get(&worker.url("/metrics")).await.1;
    }
    for series in [
        "automation_build_info{",
        "automation_worker_in_flight 0",
        "automation_worker_sequenced_total",
        "automation_worker_outbox_rows 0",
        "automation_broker_connected 1",
        "automation_db_pool_connections{state=\"in_use\"}",
        "automation_db_pool_connections{state=\"idle\"}",
    ] {
        assert!(before.contains(series), "{series} is there from the start:\n{before}");
    }
    let e = event("workflow.created", json!({"name": "measured"}));
    env.publish_structured(&e).await;
    env.wait_processed(e["id"].as_str().expect("id")).await;
    let (status, scrape) = http_get(&worker.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(scrape.contains("automation_worker_batch_size_bucket{le=\"500\"}"), "sizes have size buckets:\n{scrape}");
    let families = scrape.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let helps = scrape.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(families, helps, "every family has HELP:\n{scrape}");
    assert_eq!(automation_shared::testing::promtool_check(&scrape), "", "promtool check metrics:\n{scrape}");
    worker.stop().await.expect("clean stop");
}
