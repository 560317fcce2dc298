//! Outages of MariaDB and RabbitMQ under load, on private instances: the worker waits without
//! spending any message's attempts, says so in readiness, and carries on by itself afterwards.

use std::time::Duration;

use automation_shared::testing::TestEnv;
use automation_shared::testing::private_mariadb::PrivateMariaDb;
use automation_shared::testing::private_rabbitmq::PrivateRabbitMq;

use crate::support::{Tally, WorkerProcess, publish_load, wait_applied};

#[tokio::test]
async fn mariadb_stopped_for_twenty_seconds_under_load_dead_letters_nothing_and_the_backlog_drains() {
    let mut mariadb = PrivateMariaDb::start().await;
    let env = TestEnv::on(&mariadb.url(), &automation_shared::testing::amqp_url()).await;
    let worker = WorkerProcess::start(&env.config, &[]);
    worker.wait_ready().await;
    let mut confirmed = publish_load(&env, 0..1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    mariadb.stop().await;
    let outage = tokio::time::Instant::now();
    let mut saw_unready = false;
    let mut next = 1000;
    // The publishers carry on during the outage; the worker must hold, not burn attempts.
    while outage.elapsed() < Duration::from_secs(20) {
        confirmed += publish_load(&env, next..next + 100).await;
        next += 100;
        if worker.readiness().await == 503 {
            saw_unready = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    mariadb.restart().await;
    let applied = wait_applied(&env, confirmed, Duration::from_secs(120)).await;
    let tally = Tally::measure(&env, "mariadb down 20 s under load", next, confirmed)
        .await
        .note(format!("readiness-503-during-outage={saw_unready}"));
    assert_eq!(applied, confirmed, "the backlog drains: {tally}\n{}", worker.log_tail());
    assert!(saw_unready, "readiness tells the truth during the outage");
    assert_eq!(tally.dead_lettered, 0, "the outage dead-letters nothing: {tally}");
    assert_eq!(env.count("select count(*) from event_attempts").await, 0, "and spends no attempts");
    assert_eq!(worker.readiness().await, 200, "ready again without a restart");
    tally.check();
}

#[tokio::test]
async fn the_worker_survives_a_rabbitmq_restart_under_load() {
    let mut rabbit = PrivateRabbitMq::start().await;
    let env = TestEnv::on_broker(&rabbit.url()).await;
    let worker = WorkerProcess::start(&env.config, &[]);
    worker.wait_ready().await;
    let mut confirmed = publish_load(&env, 0..2000).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rabbit.stop().await;
    let mut saw_unready = false;
    for _ in 0..10 {
        if worker.readiness().await == 503 {
            saw_unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    rabbit.restart().await;
    worker.wait_ready().await;
    // The test's own publisher recovers too; publish the rest once it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut next = 2000;
    while next < 4000 {
        let got = publish_load(&env, next..next + 250).await;
        if got == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the publisher did not recover");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        confirmed += got;
        next += 250;
    }
    let applied = wait_applied(&env, confirmed, Duration::from_secs(120)).await;
    let tally = Tally::measure(&env, "rabbitmq restarted under load", next, confirmed)
        .await
        .note(format!("readiness-503-while-down={saw_unready}"));
    assert_eq!(applied, confirmed, "{tally}\n{}", worker.log_tail());
    assert!(saw_unready, "readiness tells the truth while the broker is away");
    assert_eq!(tally.dead_lettered, 0, "{tally}");
    tally.check();
}
