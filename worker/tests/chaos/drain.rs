//! SIGTERM under load: the worker stops taking deliveries, settles what it holds, flushes the
//! outbox and exits 0; the next one takes over where it stopped.

use std::time::Duration;

use automation_shared::testing::TestEnv;

use crate::support::{Tally, WorkerProcess, publish_load, wait_applied};

#[tokio::test]
async fn sigterm_under_load_drains_flushes_the_outbox_and_exits_zero() {
    let env = TestEnv::new().await;
    let sent = 6000;
    let confirmed = publish_load(&env, 0..sent).await;
    let mut worker = WorkerProcess::start(&env.config, &[]);
    worker.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let in_flight_before = env.count("select count(*) from inbox").await;
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(30)).await.expect("exits within the grace period");
    assert!(status.success(), "exit 0 after SIGTERM:\n{}", worker.log_tail());
    assert!(worker.log().contains("draining"), "{}", worker.log_tail());
    let applied_by_first = env.count("select count(*) from inbox").await as usize;
    assert!(applied_by_first > 0 && applied_by_first < confirmed, "stopped mid-way ({applied_by_first})");
    assert_eq!(env.count("select count(*) from outbox").await, 0, "the outbox is flushed before exit");

    let mut next = WorkerProcess::start(&env.config, &[]);
    assert_eq!(wait_applied(&env, confirmed, Duration::from_secs(120)).await, confirmed, "{}", next.log_tail());
    next.terminate();
    assert!(next.wait_exit(Duration::from_secs(30)).await.is_some_and(|s| s.success()));
    let tally = Tally::measure(&env, "sigterm under load", sent, confirmed)
        .await
        .note(format!("applied-at-sigterm={in_flight_before} applied-by-first={applied_by_first}"));
    assert_eq!(tally.dead_lettered, 0);
    tally.check();
}
