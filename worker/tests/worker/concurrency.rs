//! Two workers on one queue never apply an event twice: the inbox key decides the race.

use std::collections::HashMap;
use std::time::Duration;

use automation_shared::testing::TestEnv;
use serde_json::json;
use uuid::Uuid;

use crate::support::{TestWorker, event, plain_event_id};

#[tokio::test]
async fn duplicates_delivered_concurrently_to_two_workers_are_applied_and_announced_once() {
    let mut env = TestEnv::new().await;
    // Small batches and prefetch: copies of one event land on both workers at the same time.
    env.config.worker.batch_size = 10;
    env.config.worker.prefetch = 10;
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;

    let mut ids = Vec::new();
    let mut events = Vec::new();
    for i in 0..150 {
        let e =
            event("audit.recorded", json!({"entity": "invoice", "entityId": format!("inv-{i}"), "action": "exported"}));
        ids.push(e["id"].as_str().expect("id").to_string());
        events.push(e);
    }
    let workflows: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    // Each event three times, interleaved, as a retrying publisher would.
    for _ in 0..3 {
        for e in &events {
            env.publish_structured(e).await;
        }
        for w in &workflows {
            env.publish_plain("workflow.created", &json!({"workflowId": w, "name": "w"})).await;
        }
    }
    for w in &workflows {
        ids.push(plain_event_id("workflow.created", &json!({"workflowId": w, "name": "w"}).to_string()));
    }
    let processed = env.wait_count("select count(*) from inbox", ids.len() as i64, Duration::from_secs(60)).await;
    assert_eq!(processed, ids.len() as i64);
    // Let the last copies settle before counting effects.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tap.settle().await;

    assert_eq!(
        env.count("select count(*) from audit_log where entity = 'invoice'").await,
        150,
        "one audit effect per event"
    );
    assert_eq!(env.count("select count(*) from workflows").await, 30);
    assert_eq!(env.count("select count(*) from audit_log").await, 180);
    let mut per_cause: HashMap<String, usize> = HashMap::new();
    for n in tap.all() {
        *per_cause.entry(n["causationid"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(per_cause.get(id), Some(&1), "exactly one notification for {id}");
    }
    assert_eq!(per_cause.len(), ids.len());
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
    first.stop().await.expect("clean stop");
    second.stop().await.expect("clean stop");
}
