//! A connection lost during COMMIT: the server committed, the worker never heard. The batch runs
//! again (the outcome is unknown, so it must), and the inbox makes that second run skip what the
//! first committed: every event applied once, no attempt spent, nothing dead-lettered. This is
//! what a Galera node killed under a commit, a failover or a proxy's cut connections do.

use std::time::Duration;

use automation_shared::testing::TestEnv;
use automation_shared::testing::lost_commit::LostCommitProxy;
use serde_json::json;

use crate::support::{TestWorker, event, http_get};

/// The port of `TEST_DATABASE_URL`'s server.
fn server_port() -> u16 {
    let url = automation_shared::testing::database_server_url();
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or(3306)
}

/// The worker's count of events it settled as duplicates.
async fn duplicates_seen(worker: &TestWorker) -> f64 {
    let (_, scrape) = http_get(&worker.url("/metrics")).await;
    scrape
        .lines()
        .filter(|l| l.starts_with(automation_shared::meters::WORKER_EVENTS) && l.contains("outcome=\"duplicate\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_batch_whose_commit_reply_was_lost_runs_again_and_the_inbox_applies_it_once() {
    let env = TestEnv::new().await;
    let proxy = LostCommitProxy::start(server_port()).await;
    let mut config = env.config.clone();
    config.database.url = Some(format!("{}/{}?ssl-mode=disabled", proxy.url(), env.database));
    let worker = TestWorker::start(&config).await;

    // Other transactions of the worker (the outbox relay, the sweeps) commit too: lose commits
    // until one of them was a batch of events, which the worker then finds in the inbox.
    let mut ids = Vec::new();
    let mut round = 0;
    while duplicates_seen(&worker).await < 1.0 {
        round += 1;
        assert!(round <= 20, "no batch of events lost its commit reply in 20 rounds ({} lost)", proxy.lost());
        let lost_before = proxy.lost();
        proxy.arm(1);
        let batch: Vec<_> = (0..20)
            .map(|i| {
                event(
                    "audit.recorded",
                    json!({"entity": "lost-commit", "entityId": format!("r{round}-{i}"), "action": "hit"}),
                )
            })
            .collect();
        for e in &batch {
            env.publish_structured(e).await;
            ids.push(e["id"].as_str().expect("id").to_string());
        }
        for id in &ids {
            assert_eq!(env.wait_processed_within(id, Duration::from_secs(30)).await, "applied");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while proxy.lost() == lost_before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(proxy.lost() >= 1);
    let records = env.count("select count(*) from audit_log where entity = 'lost-commit'").await;
    let entities = env.count("select count(distinct entity_id) from audit_log where entity = 'lost-commit'").await;
    assert_eq!(entities as usize, ids.len(), "every event applied");
    assert_eq!(records, entities, "none applied twice");
    assert_eq!(env.count("select count(*) from inbox where outcome = 'applied'").await as usize, ids.len());
    assert_eq!(env.count("select count(*) from event_attempts").await, 0, "no attempt spent");
    assert_eq!(env.count("select count(*) from dead_letters").await, 0, "nothing dead-lettered");
}
