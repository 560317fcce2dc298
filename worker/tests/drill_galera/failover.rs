//! Under load, the Galera node HAProxy writes to is SIGKILLed: HAProxy moves the worker to a
//! backup node, and the transactions cut mid-way (some during COMMIT, their outcome unknown) run
//! again. The node comes back by IST (and HAProxy moves the writes back to it); then another node
//! is killed and comes back by a full SST, under load too.

use std::time::{Duration, Instant};

use automation_shared::testing::TestEnv;
use automation_shared::testing::galera::{GaleraCluster, Rejoin};

use crate::support::{Tally, WorkerProcess, publish_load};
use crate::{count_now, fresh_pool};

const APPLIED: &str = "select count(distinct entity_id) from audit_log where entity = 'chaos'";

/// Publishes load for `duration` (100 events every 100 ms); returns the last number used and how
/// many the broker confirmed.
async fn load_for(env: &TestEnv, next: &mut usize, duration: Duration) -> usize {
    let until = Instant::now() + duration;
    let mut confirmed = 0;
    while Instant::now() < until {
        confirmed += publish_load(env, *next..*next + 100).await;
        *next += 100;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    confirmed
}

/// Load while waiting for the worker's commits to go on after a fault at `fault`: the time until
/// the count of applied events, first read after the fault, grows again.
async fn recovery_under_load(env: &TestEnv, next: &mut usize, fault: Instant) -> (Duration, usize) {
    let mut confirmed = 0;
    let mut seen: Option<i64> = None;
    loop {
        confirmed += publish_load(env, *next..*next + 100).await;
        *next += 100;
        if let Some(now) = count_now(&env.pool, APPLIED).await {
            match seen {
                Some(first) if now > first => return (fault.elapsed(), confirmed),
                None => seen = Some(now),
                _ => {}
            }
        }
        assert!(
            fault.elapsed() < Duration::from_secs(120),
            "the worker did not apply anything within 120 s of the fault"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_galera_node_killed_under_load_then_rejoined_by_ist_and_sst_loses_nothing_and_applies_nothing_twice() {
    let started = Instant::now();
    let mut cluster = GaleraCluster::start().await;
    let cluster_up = started.elapsed();
    let mut env = TestEnv::on(&cluster.proxy_url(), &automation_shared::testing::amqp_url()).await;
    let worker = WorkerProcess::start(&env.config, &[]);
    worker.wait_ready().await;
    let mut next = 0;
    let mut confirmed = load_for(&env, &mut next, Duration::from_secs(3)).await;

    // The node HAProxy writes to, killed in the middle of the load.
    assert!(cluster.proxy_status().iter().any(|(n, s)| n == "node1" && s == "UP"), "{:?}", cluster.proxy_status());
    let killed = Instant::now();
    cluster.kill(0);
    let (failover, got) = recovery_under_load(&env, &mut next, killed).await;
    confirmed += got;
    confirmed += load_for(&env, &mut next, Duration::from_secs(3)).await;

    // It comes back by IST, under load; HAProxy then moves the writes back to it (the backups'
    // sessions are shut), a second switch of the writer.
    let ist = cluster.rejoin(0, Rejoin::Ist).await;
    let by_ist = cluster.joined_by_ist(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster.proxy_status().iter().any(|(n, s)| n == "node1" && s == "UP") {
        assert!(Instant::now() < deadline, "HAProxy did not take node 1 back: {:?}", cluster.proxy_status());
        confirmed += publish_load(&env, next..next + 100).await;
        next += 100;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let switched_back = Instant::now();
    let (failback, got) = recovery_under_load(&env, &mut next, switched_back).await;
    confirmed += got;
    confirmed += load_for(&env, &mut next, Duration::from_secs(3)).await;

    // A backup node killed and rebuilt from nothing (SST), the load going on.
    cluster.kill(2);
    confirmed += load_for(&env, &mut next, Duration::from_secs(2)).await;
    let sst = cluster.rejoin(2, Rejoin::Sst).await;
    confirmed += load_for(&env, &mut next, Duration::from_secs(2)).await;

    fresh_pool(&mut env).await;
    let drained = Instant::now();
    let applied = env.wait_count(APPLIED, confirmed as i64, Duration::from_secs(180)).await as usize;
    let drain = drained.elapsed();
    let tally = Tally::measure(&env, "galera node killed, IST, SST", next, confirmed)
        .await
        .note(format!("writes-resumed-after-kill={:.1}s", failover.as_secs_f64()))
        .note(format!("ist-rejoin={:.1}s(by-ist={by_ist})", ist.as_secs_f64()))
        .note(format!("writes-resumed-after-failback={:.1}s", failback.as_secs_f64()))
        .note(format!("sst-rejoin={:.1}s", sst.as_secs_f64()))
        .note(format!("drain={:.1}s", drain.as_secs_f64()))
        .note(format!("cluster-start={:.1}s", cluster_up.as_secs_f64()));
    assert_eq!(applied, confirmed, "the backlog drains: {tally}\n{}\n{}", worker.log_tail(), cluster.logs());
    assert!(by_ist, "the killed node caught up by IST:\n{}", cluster.logs());
    assert_eq!(tally.dead_lettered, 0, "nothing dead-lettered: {tally}\n{}", worker.log_tail());
    let attempts = env.count("select count(*) from event_attempts").await;
    assert_eq!(attempts, 0, "no attempt spent on the failover: {tally}\n{}", worker.log_tail());
    let sizes = [cluster.cluster_size(0).await, cluster.cluster_size(1).await, cluster.cluster_size(2).await];
    assert_eq!(sizes, [Some(3); 3], "the cluster is whole again");
    tally.check();
}
