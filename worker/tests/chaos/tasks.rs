//! A worker killed while a task runs: the attempt's message comes back to the next worker, which
//! runs it again, so the run ends instead of staying `running` for ever.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use automation_shared::db::runs::{self, RunState};
use automation_shared::testing::TestEnv;
use serde_json::json;
use uuid::Uuid;

use crate::runs::{publish_start, queued_run, state_of};
use crate::support::{Tally, WorkerProcess};

const SECRET: &str = "a-webhook-secret-for-the-tests-only";

/// A webhook receiver whose first call hangs (the worker is killed meanwhile); later calls get 200.
async fn start_receiver() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let calls = counted.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(300)).await;
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, calls)
}

#[tokio::test]
async fn a_worker_killed_mid_task_leaves_the_attempt_to_the_next_worker() {
    let env = TestEnv::new().await;
    let (url, calls) = start_receiver().await;
    let extra = [("AUTOMATION_TASKS__WEBHOOK_SECRET", SECRET), ("AUTOMATION_WORKER__BATCH_TIMEOUT_MS", "300")];

    // A queued run and its start message, then two automation events behind it, all waiting
    // before any worker runs: the first batch of the tasks queue holds both kinds, the start
    // message first. (Acking the events must not ack the start message with them.)
    let run = queued_run(&env, "webhook.call", json!({"url": url, "timeoutSeconds": 120})).await;
    publish_start(&env, run.id, 1).await;
    let others = [Uuid::new_v4(), Uuid::new_v4()];
    for other in others {
        env.publish_structured(&json!({
            "specversion": "1.0", "id": Uuid::new_v4().to_string(), "source": "/chaos", "type": "automation.requested",
            "data": {"runId": other, "automation": "approvals.escalate_stale"}
        }))
        .await;
    }

    let mut first = WorkerProcess::start(&env.config, &extra);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while calls.load(Ordering::SeqCst) == 0 || state_of(&env, others[1]).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the task never started:\n{}", first.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The task hangs in its webhook call; the automation events beside it were applied and acked.
    first.kill();
    assert_eq!(state_of(&env, run.id).await, Some(RunState::Running));

    let mut second = WorkerProcess::start(&env.config, &extra);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while state_of(&env, run.id).await != Some(RunState::Succeeded) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the killed attempt never came back; the run is {:?}:\n{}",
            state_of(&env, run.id).await,
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finished = runs::find(&env.pool, run.id).await.expect("query").expect("the run");
    assert_eq!(finished.attempts, 1, "the same attempt ran again, not a new one");
    second.kill();
    let succeeded = usize::from(finished.state == RunState::Succeeded);
    Tally {
        scenario: "worker killed mid-task",
        sent: 1,
        confirmed: 1,
        applied: succeeded,
        lost: 1 - succeeded,
        dead_lettered: env.count("select count(*) from dead_letters").await as usize,
        ..Tally::default()
    }
    .note(format!("webhook-calls={} (at least once: the killed call and its re-run)", calls.load(Ordering::SeqCst)))
    .check();
}
