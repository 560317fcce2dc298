//! Transient failures are retried later without holding a consumer; what keeps failing is
//! dead-lettered with its history once its attempts run out.

use std::time::Duration;

use automation_shared::testing::TestEnv;
use serde_json::json;
use uuid::Uuid;

use crate::support::{TestWorker, event};

/// Holds a row lock on a workflow from outside the worker, as a long migration or a stuck
/// session would.
pub async fn lock_workflow(env: &TestEnv, workflow: Uuid) -> sqlx::Transaction<'static, sqlx::MySql> {
    let mut tx = env.pool.begin().await.expect("begin");
    sqlx::query("select id from workflows where id = ? for update")
        .bind(workflow.to_string())
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

pub async fn create_workflow(env: &TestEnv) -> Uuid {
    let workflow = Uuid::new_v4();
    let e = event("workflow.created", json!({"workflowId": workflow, "name": "locked"}));
    env.publish_structured(&e).await;
    env.wait_processed(e["id"].as_str().expect("id")).await;
    workflow
}

#[tokio::test]
async fn an_event_blocked_by_a_lock_is_retried_later_and_applied_once_the_lock_is_gone() {
    let mut env = TestEnv::new().await;
    env.config.database.lock_wait_timeout_secs = 1;
    let _worker = TestWorker::start(&env.config).await;
    let workflow = create_workflow(&env).await;
    let lock = lock_workflow(&env, workflow).await;
    let e = event("workflow.status_changed", json!({"workflowId": workflow, "status": "PAUSED"}));
    let id = e["id"].as_str().expect("id").to_string();
    env.publish_structured(&e).await;

    // Meanwhile the event says it is retrying, and other events flow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = env.pool.acquire().await.expect("conn");
        let status = automation_shared::db::events::status(&mut conn, &id, None).await.expect("status");
        if status.status == automation_shared::events::EventState::Retrying {
            assert!(status.detail.unwrap_or_default().contains("Lock wait timeout"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the event never showed as retrying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let other = event("audit.recorded", json!({"entity": "invoice", "entityId": "while-locked", "action": "sent"}));
    env.publish_structured(&other).await;
    env.wait_processed(other["id"].as_str().expect("id")).await;

    lock.rollback().await.expect("release");
    assert_eq!(env.wait_processed_within(&id, Duration::from_secs(30)).await, "applied");
    let status: String = sqlx::query_scalar("select status from workflows where id = ?")
        .bind(workflow.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(status, "PAUSED");
    assert_eq!(env.count_bound("select count(*) from audit_log where event_id = ?", &id).await, 1);
    assert_eq!(
        env.count_bound("select count(*) from event_attempts where event_id = ?", &id).await,
        0,
        "the retry bookkeeping is cleared"
    );
    assert_eq!(env.count("select count(*) from dead_letters").await, 0);
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_handler_that_panics_is_dead_lettered_with_its_history_after_its_attempts() {
    let mut env = TestEnv::new().await;
    env.config.worker.max_attempts = 3;
    env.config.worker.retry_delays_ms = vec![100, 200];
    let _worker = TestWorker::start(&env.config).await;
    let poison = event(
        "audit.recorded",
        json!({"entity": "x", "entityId": "1", "action": automation_worker::faults::PANIC_ACTION}),
    );
    let good = event("audit.recorded", json!({"entity": "x", "entityId": "2", "action": "fine"}));
    env.publish_structured(&poison).await;
    env.publish_structured(&good).await;
    env.wait_processed(good["id"].as_str().expect("id")).await;
    assert_eq!(env.wait_count("select count(*) from dead_letters", 1, Duration::from_secs(30)).await, 1);
    let (kind, attempts, reason, history): (String, u32, String, String) =
        sqlx::query_as("select error_kind, attempts, reason, cast(history as char) from dead_letters")
            .fetch_one(&env.pool)
            .await
            .expect("row");
    assert_eq!(kind, "exhausted");
    assert_eq!(attempts, 3);
    assert!(reason.starts_with("gave up after 3 attempts"), "{reason}");
    let history: Vec<serde_json::Value> = serde_json::from_str(&history).expect("history");
    assert_eq!(history.len(), 3, "{history:?}");
    assert!(history.iter().all(|f| f["kind"] == "bug" && f["error"].as_str().unwrap_or_default().contains("panicked")));
    assert_eq!(history.iter().map(|f| f["attempt"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        env.count_bound("select count(*) from inbox where event_id = ?", poison["id"].as_str().expect("id")).await,
        0
    );
}
