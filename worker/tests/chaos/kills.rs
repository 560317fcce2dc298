//! The worker killed with SIGKILL at random points under load, and crashing between COMMIT and
//! the ack: nothing lost, nothing applied twice.

use std::collections::HashMap;
use std::time::Duration;

use automation_shared::testing::TestEnv;

use crate::support::{Tally, WorkerProcess, publish_load, random_below, wait_applied};

#[tokio::test]
async fn killed_five_times_under_load_it_loses_nothing_and_applies_nothing_twice() {
    let env = TestEnv::new().await;
    let mut sent = 0;
    let mut confirmed = 0;
    let mut kills = Vec::new();
    for _ in 0..5 {
        // Fresh work before every start, so every kill lands mid-batch.
        confirmed += publish_load(&env, sent..sent + 3000).await;
        sent += 3000;
        let mut worker = WorkerProcess::start(&env.config, &[]);
        worker.wait_ready().await;
        let after = 50 + random_below(400);
        tokio::time::sleep(Duration::from_millis(after)).await;
        worker.kill();
        let applied = env.count("select count(*) from inbox").await;
        kills.push(format!("{after}ms:{applied}/{sent}"));
    }
    let mut worker = WorkerProcess::start(&env.config, &[]);
    let applied = wait_applied(&env, confirmed, Duration::from_secs(120)).await;
    assert_eq!(applied, confirmed, "the backlog drains after the kills:\n{}", worker.log_tail());
    worker.wait_ready().await;
    worker.terminate();
    let exit = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(exit.is_some_and(|s| s.success()), "exit {exit:?} after SIGTERM:\n{}", worker.log_tail());
    let tally = Tally::measure(&env, "sigkill x5 under load", sent, confirmed)
        .await
        .note(format!("kills(after:applied/sent)={}", kills.join(",")));
    assert_eq!(tally.dead_lettered, 0, "a kill costs no message its life: {tally}");
    tally.check();
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_crash_between_commit_and_ack_applies_nothing_twice_and_still_announces_everything() {
    let env = TestEnv::new().await;
    let tap = env.notifications().await;
    let sent = 1500;
    let confirmed = publish_load(&env, 0..sent).await;
    let mut crashing = WorkerProcess::start(&env.config, &[(automation_worker::faults::CRASH_AFTER_COMMIT, "3")]);
    let status = crashing.wait_exit(Duration::from_secs(60)).await.expect("the hook crashes the worker");
    assert!(!status.success(), "it aborted");
    assert!(crashing.log().contains("aborting after commit 3"), "{}", crashing.log_tail());
    let committed = env.count("select count(*) from inbox").await as usize;
    assert!(committed > 0, "batches committed before the crash");

    let worker = WorkerProcess::start(&env.config, &[]);
    assert_eq!(wait_applied(&env, confirmed, Duration::from_secs(120)).await, confirmed, "{}", worker.log_tail());
    // The crashed worker's outbox rows were never published by it: the sweep does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut causes: HashMap<String, Vec<String>> = HashMap::new();
    while tokio::time::Instant::now() < deadline {
        causes.clear();
        for n in tap.all() {
            causes
                .entry(n["causationid"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(n["id"].as_str().unwrap_or_default().to_string());
        }
        if causes.len() >= confirmed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tap.settle().await;
    let copies: usize = causes.values().map(Vec::len).sum::<usize>() - causes.len();
    let distinct_per_cause = causes.values().all(|ids| ids.iter().all(|id| *id == ids[0]));
    let tally = Tally::measure(&env, "crash after commit, before ack", sent, confirmed).await.note(format!(
        "committed-before-crash={committed} notified={} notification-copies-with-same-id={copies}",
        causes.len()
    ));
    assert_eq!(causes.len(), confirmed, "every applied event is announced: {tally}");
    assert!(distinct_per_cause, "a cause never gets two different notifications: {tally}");
    tally.check();
}
