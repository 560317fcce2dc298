//! Per-entity order under a stream: two worker processes, one SIGKILLed mid-stream and another
//! started in its place (2 → 1 → 2). Every event applied once, and each entity's events in the
//! order they were sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use automation_shared::testing::TestEnv;
use serde_json::{Value, json};

use crate::support::{Tally, WorkerProcess, publish_audits, random_below};

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

#[tokio::test]
async fn ordered_under_kills_and_scaling() {
    let env = TestEnv::with_partitions(PARTITIONS).await;
    let extra = [
        ("AUTOMATION_WORKER__ORDERING", "partitioned"),
        ("AUTOMATION_WORKER__PARTITIONS", "8"),
        ("AUTOMATION_WORKER__CONSUMERS", "2"),
    ];
    let mut first = WorkerProcess::start(&env.config, &extra);
    let second = WorkerProcess::start(&env.config, &extra);
    first.wait_ready().await;
    second.wait_ready().await;

    let events = stream();
    let confirmed = AtomicUsize::new(0);
    let published = AtomicBool::new(false);
    let applied_sql = "select count(*) from inbox";

    // One publisher on one channel: the order sent is the order in the queue.
    let publish = async {
        let exchange = env.names().events();
        for chunk in events.chunks(CHUNK) {
            if publish_audits(&env, &exchange, chunk).await {
                confirmed.fetch_add(chunk.len(), Ordering::SeqCst);
            }
            tokio::time::sleep(PAUSE).await;
        }
        published.store(true, Ordering::SeqCst);
    };
    // Mid-stream: SIGKILL the first worker while it holds deliveries, then start a third.
    let faults = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while confirmed.load(Ordering::SeqCst) < EVENTS / 4 || env.count(applied_sql).await < 300 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the stream was not being applied after 60 s (applied {}):\n{}",
                env.count(applied_sql).await,
                first.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        first.kill();
        let at_kill = (confirmed.load(Ordering::SeqCst), env.count(applied_sql).await);
        while confirmed.load(Ordering::SeqCst) < EVENTS * 3 / 5 && !published.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let third = WorkerProcess::start(&env.config, &extra);
        third.wait_ready().await;
        let at_start = (confirmed.load(Ordering::SeqCst), env.count(applied_sql).await);
        (third, at_kill, at_start)
    };
    let ((), (third, at_kill, at_start)) = tokio::join!(publish, faults);
    let confirmed = confirmed.load(Ordering::SeqCst);

    let applied = env
        .wait_count(
            "select count(distinct event_id) from audit_log where entity = 'ordered'",
            confirmed as i64,
            Duration::from_secs(180),
        )
        .await as usize;
    assert!(
        applied >= confirmed,
        "the stream drains ({applied}/{confirmed} applied):\n{}\n{}",
        second.log_tail(),
        third.log_tail()
    );
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
        scenario: "ordered: sigkill and scaling 2 -> 1 -> 2",
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
        "entities={} killed-at(confirmed:applied)={}:{} third-started-at={}:{} refused={}",
        per_entity.len(),
        at_kill.0,
        at_kill.1,
        at_start.0,
        at_start.1,
        env.count("select count(*) from inbox where outcome = 'rejected'").await
    ));
    assert_eq!(tally.dead_lettered, 0, "a kill costs no message its life: {tally}");
    assert_eq!(per_entity.len(), ENTITIES, "every entity has its records: {tally}");
    tally.check();
}
