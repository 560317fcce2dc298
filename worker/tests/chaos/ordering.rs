//! Per-entity order under a stream: two worker processes, one SIGKILLed mid-stream and another
//! started in its place (2 → 1 → 2); one stopped with SIGTERM, handing its partitions over; and
//! the broker restarted under both, sequencer lock and all. Every event applied once, and each
//! entity's events in the order they were sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use automation_shared::events::WorkQueue;
use automation_shared::messaging::{self, Publisher};
use automation_shared::testing::TestEnv;
use automation_shared::testing::private_rabbitmq::PrivateRabbitMq;
use serde_json::{Value, json};

use crate::support::{Tally, WorkerProcess, publish_audits, publish_audits_with, random_below};

/// The entity kind the stream records; its ids are `o-0` … `o-49`.
const ORDERED: &str = "ordered";
const ENTITIES: usize = 50;
const EVENTS: usize = 10_000;
const PARTITIONS: u16 = 8;
/// Messages per `publish_all`, and the pause between them: a stream, not a burst.
const CHUNK: usize = 100;
const PAUSE: Duration = Duration::from_millis(20);

/// The stream: each event on an entity picked at random, carrying its number among that
/// entity's events (`details.seq`, from 0) and an id made of both, so a redelivery is recognised.
fn stream() -> Vec<(String, Vec<u8>)> {
    let mut next = [0_usize; ENTITIES];
    (0..EVENTS)
        .map(|_| {
            let entity = random_below(ENTITIES as u64) as usize;
            let seq = next[entity];
            next[entity] += 1;
            let id = format!("ordered-{entity}-{seq}");
            let body = json!({
                "specversion": "1.0", "id": id, "source": "/chaos", "type": "audit.recorded",
                "data": {"entity": ORDERED, "entityId": format!("o-{entity}"), "action": "step", "details": {"seq": seq}}
            });
            (id, body.to_string().into_bytes())
        })
        .collect()
}

/// Pairs (i, j) with i applied before j but sent after it.
fn inversions(applied: &[u64]) -> usize {
    let mut count = 0;
    for (i, earlier) in applied.iter().enumerate() {
        count += applied[i + 1..].iter().filter(|later| *later < earlier).count();
    }
    count
}

/// The workers' layout for these scenarios.
const LAYOUT: [(&str, &str); 3] = [
    ("AUTOMATION_WORKER__ORDERING", "partitioned"),
    ("AUTOMATION_WORKER__PARTITIONS", "8"),
    ("AUTOMATION_WORKER__CONSUMERS", "2"),
];

/// What the publisher got through.
#[derive(Default)]
struct Progress {
    confirmed: AtomicUsize,
    published: AtomicBool,
}

impl Progress {
    fn confirmed(&self) -> usize {
        self.confirmed.load(Ordering::SeqCst)
    }

    /// Waits until `share` of the stream is confirmed and at least `applied` events applied.
    async fn wait_for(&self, env: &TestEnv, share: usize, applied: i64, log: &WorkerProcess) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.confirmed() < share && !self.published.load(Ordering::SeqCst)
            || env.count("select count(*) from inbox").await < applied
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream was not being applied after 60 s (applied {}):\n{}",
                env.count("select count(*) from inbox").await,
                log.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One publisher on one channel: the order sent is the order in the queue. A chunk the broker
/// does not confirm (it is away) is sent again, whole, before anything after it, as a careful
/// publisher does: what got in the first time comes again behind itself, and the inbox skips it.
///
/// The environment's connection mostly recovers by itself after a broker restart; a careful
/// publisher does not count on that (once, in CI, it did not within two minutes): after a few
/// seconds without a confirm it opens a connection of its own and goes on there.
async fn publish_stream(env: &TestEnv, events: &[(String, Vec<u8>)], progress: &Progress) {
    let exchange = env.names().events();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut own: Option<(std::sync::Arc<lapin::Connection>, Publisher)> = None;
    let mut failing_since: Option<tokio::time::Instant> = None;
    for chunk in events.chunks(CHUNK) {
        loop {
            let through = match &own {
                Some((_, publisher)) => publish_audits_with(publisher, &exchange, chunk).await,
                None => publish_audits(env, &exchange, chunk).await,
            };
            if through {
                failing_since = None;
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the publisher never got through again");
            if failing_since.get_or_insert_with(tokio::time::Instant::now).elapsed() > Duration::from_secs(5)
                && let Ok(connection) = messaging::connect_once(
                    &automation_shared::testing::addresses(&env.config.amqp.url),
                    "chaos publisher",
                )
                .await
            {
                let connection = std::sync::Arc::new(connection);
                if let Ok(publisher) = Publisher::new(connection.clone(), Duration::from_secs(5)).await {
                    own = Some((connection, publisher));
                    failing_since = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        progress.confirmed.fetch_add(chunk.len(), Ordering::SeqCst);
        tokio::time::sleep(PAUSE).await;
    }
    progress.published.store(true, Ordering::SeqCst);
}

/// Waits for the stream to drain, then counts what was applied, twice, and out of order.
async fn ordered_tally(env: &TestEnv, scenario: &'static str, confirmed: usize, logs: &[&WorkerProcess]) -> Tally {
    let applied = env
        .wait_count(
            "select count(distinct event_id) from audit_log where entity = 'ordered'",
            confirmed as i64,
            Duration::from_secs(180),
        )
        .await as usize;
    let tails: Vec<String> = logs.iter().map(|w| w.log_tail()).collect();
    assert!(applied >= confirmed, "the stream drains ({applied}/{confirmed} applied):\n{}", tails.join("\n"));
    // Let a stray copy reach a worker and be skipped before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("select entity_id, event_id, details from audit_log where entity = 'ordered' order by seq")
            .fetch_all(&env.pool)
            .await
            .expect("the stream's audit records");
    let mut per_entity: HashMap<String, Vec<u64>> = HashMap::new();
    let mut distinct = HashSet::new();
    for (entity, event_id, details) in &rows {
        distinct.insert(event_id.clone().unwrap_or_default());
        let details: Value = serde_json::from_str(details.as_deref().unwrap_or("null")).expect("details are JSON");
        let seq = details["seq"].as_u64().expect("each record carries its seq");
        per_entity.entry(entity.clone()).or_default().push(seq);
    }
    let out_of_order: usize = per_entity.values().map(|seqs| inversions(seqs)).sum();
    let tally = Tally {
        scenario,
        sent: EVENTS,
        confirmed,
        applied: distinct.len(),
        duplicated: rows.len() - distinct.len(),
        lost: confirmed.saturating_sub(distinct.len()),
        dead_lettered: env.count("select count(*) from dead_letters").await as usize,
        out_of_order: Some(out_of_order),
        notes: Vec::new(),
    }
    .note(format!(
        "entities={} refused={}",
        per_entity.len(),
        env.count("select count(*) from inbox where outcome = 'rejected'").await
    ));
    assert_eq!(tally.dead_lettered, 0, "a fault costs no message its life: {tally}");
    assert_eq!(per_entity.len(), ENTITIES, "every entity has its records: {tally}");
    tally
}

#[tokio::test]
async fn ordered_under_kills_and_scaling() {
    let env = TestEnv::with_partitions(PARTITIONS).await;
    let mut first = WorkerProcess::start(&env.config, &LAYOUT);
    let second = WorkerProcess::start(&env.config, &LAYOUT);
    first.wait_ready().await;
    second.wait_ready().await;

    let events = stream();
    let progress = Progress::default();
    // Mid-stream: SIGKILL the first worker while it holds deliveries, then start a third.
    let faults = async {
        progress.wait_for(&env, EVENTS / 4, 300, &first).await;
        first.kill();
        let at_kill = (progress.confirmed(), env.count("select count(*) from inbox").await);
        progress.wait_for(&env, EVENTS * 3 / 5, 0, &second).await;
        let third = WorkerProcess::start(&env.config, &LAYOUT);
        third.wait_ready().await;
        let at_start = (progress.confirmed(), env.count("select count(*) from inbox").await);
        (third, at_kill, at_start)
    };
    let ((), (third, at_kill, at_start)) = tokio::join!(publish_stream(&env, &events, &progress), faults);
    let tally =
        ordered_tally(&env, "ordered: sigkill and scaling 2 -> 1 -> 2", progress.confirmed(), &[&second, &third])
            .await
            .note(format!(
                "killed-at(confirmed:applied)={}:{} third-started-at={}:{}",
                at_kill.0, at_kill.1, at_start.0, at_start.1
            ));
    tally.check();
}

/// Scale-down as Kubernetes does it: SIGTERM mid-stream. The stopping worker finishes its
/// batches, gives its partitions up and leaves; the other takes them over at once, and the
/// deliveries it had not acked come back at the head of their partitions.
#[tokio::test]
async fn ordered_through_a_sigterm_hand_over_and_a_new_worker() {
    let env = TestEnv::with_partitions(PARTITIONS).await;
    let mut first = WorkerProcess::start(&env.config, &LAYOUT);
    let second = WorkerProcess::start(&env.config, &LAYOUT);
    first.wait_ready().await;
    second.wait_ready().await;

    let events = stream();
    let progress = Progress::default();
    let faults = async {
        progress.wait_for(&env, EVENTS / 4, 300, &first).await;
        let asked = std::time::Instant::now();
        first.terminate();
        let status = first.wait_exit(Duration::from_secs(25)).await;
        let stopped_in = asked.elapsed();
        assert!(status.is_some_and(|s| s.success()), "the worker stops cleanly on SIGTERM:\n{}", first.log_tail());
        progress.wait_for(&env, EVENTS * 3 / 5, 0, &second).await;
        let third = WorkerProcess::start(&env.config, &LAYOUT);
        third.wait_ready().await;
        (third, stopped_in)
    };
    let ((), (third, stopped_in)) = tokio::join!(publish_stream(&env, &events, &progress), faults);
    let tally = ordered_tally(&env, "ordered: sigterm hand-over 2 -> 1 -> 2", progress.confirmed(), &[&second, &third])
        .await
        .note(format!("sigterm-to-exit={}ms", stopped_in.as_millis()));
    tally.check();
}

/// The broker restarted under two workers: every connection goes, the sequencer's exclusive lock
/// queue with it. The workers reconnect, one of them takes the lock again, and the order holds.
#[tokio::test]
async fn ordered_through_a_rabbitmq_restart() {
    let mut rabbit = PrivateRabbitMq::start().await;
    let mut env = TestEnv::on_broker(&rabbit.url()).await;
    env.config.worker.partitions = PARTITIONS;
    let first = WorkerProcess::start(&env.config, &LAYOUT);
    let second = WorkerProcess::start(&env.config, &LAYOUT);
    first.wait_ready().await;
    second.wait_ready().await;

    let events = stream();
    let progress = Progress::default();
    let faults = async {
        progress.wait_for(&env, EVENTS / 4, 300, &first).await;
        rabbit.stop().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted = std::time::Instant::now();
        rabbit.restart().await;
        first.wait_ready().await;
        second.wait_ready().await;
        restarted.elapsed()
    };
    let ((), recovered_in) = tokio::join!(publish_stream(&env, &events, &progress), faults);
    let tally =
        ordered_tally(&env, "ordered: rabbitmq restart under 2 workers", progress.confirmed(), &[&first, &second])
            .await
            .note(format!("restart-to-both-ready={}ms", recovered_in.as_millis()));
    // One sequencer again, not two: the lock is the broker's, and it came back with one holder.
    let commands = env.names().work_queue(WorkQueue::Commands);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let consumers = env.consumers_on(&commands).await;
        if consumers == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{consumers} consumers on {commands}: {tally}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tally.check();
}
