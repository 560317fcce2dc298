//! The RabbitMQ cluster drill (`make drill-rabbitmq-cluster`): a 3-node cluster of the test's own,
//! two worker processes and the API with `AMQP_URL` listing every node. Under load from the API
//! (HTTP commands with a JWT) and from a Spring-style publisher (plain JSON, confirms, a new
//! connection to another node when its node goes), the node leading `<prefix>.commands` is
//! SIGKILLed and started again later, then all three nodes are restarted one by one. Passes with
//! nothing lost, nothing applied twice, every 202 applied once, 503s only around a fault, and
//! the Spring stream's events applied in order per entity; prints the tally and recovery times.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

#[path = "../../../api/tests/api/support.rs"]
#[allow(dead_code, reason = "shared with the api tests; the drill uses part of it")]
mod api_support;
#[path = "../chaos/support.rs"]
#[allow(dead_code, reason = "shared with the fault suite; the drill uses part of it")]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::events::WorkQueue;
use automation_shared::messaging::{self, Outgoing, Publisher};
use automation_shared::testing::rabbitmq_cluster::RabbitMqCluster;
use automation_shared::testing::{TestEnv, addresses, spring_plain_properties};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api_support::TestApi;
use crate::support::{Tally, WorkerProcess};

/// The Spring stream's entities (`o-0` … `o-19`), each event carrying its number among that
/// entity's events.
const ENTITIES: usize = 20;
const LAYOUT: [(&str, &str); 2] =
    [("AUTOMATION_WORKER__ORDERING", "partitioned"), ("AUTOMATION_WORKER__CONSUMERS", "2")];

/// How long after a node's loss the API may answer 503: its link's recovery, or a new link when
/// lapin's stalls (10 s), plus the connection itself.
const REFUSALS_WITHIN: f64 = 20.0;

/// What happened when, relative to the start of the load.
#[derive(Default)]
struct Timeline {
    /// Each fault: (what, start, end) in seconds from the start.
    faults: Vec<(String, f64, f64)>,
}

/// The Spring-style publisher: plain JSON (no message id: the same body is the same event),
/// one message at a time with confirms; an unconfirmed message is sent again before the next,
/// and after 3 s without a confirm it opens a new connection, which the dialer takes to the next
/// node. Returns (messages sent, the instant of each confirm).
async fn spring_publisher(env: &TestEnv, stop: &tokio_util::sync::CancellationToken) -> (usize, Vec<Instant>) {
    let exchange = env.names().events();
    let nodes = addresses(&env.config.amqp.url);
    let mut publisher: Option<(Arc<lapin::Connection>, Publisher)> = None;
    let mut next = [0_usize; ENTITIES];
    let mut confirms = Vec::new();
    let mut failing_since: Option<Instant> = None;
    let mut i = 0_usize;
    while !stop.is_cancelled() {
        let entity = i % ENTITIES;
        let seq = next[entity];
        let body =
            json!({"entity": "ordered", "entityId": format!("o-{entity}"), "action": "step", "details": {"seq": seq}})
                .to_string();
        loop {
            if publisher.is_none()
                && let Ok(connection) = messaging::connect(&nodes, "spring-style publisher").await
            {
                let connection = Arc::new(connection);
                if let Ok(p) = Publisher::new(connection.clone(), Duration::from_secs(5)).await {
                    publisher = Some((connection, p));
                }
            }
            let through = match &publisher {
                Some((_, p)) => p
                    .publish(Outgoing {
                        exchange: &exchange,
                        routing_key: "audit.recorded",
                        body: body.as_bytes(),
                        properties: spring_plain_properties(),
                        mandatory: false,
                    })
                    .await
                    .is_ok(),
                None => false,
            };
            if through {
                failing_since = None;
                confirms.push(Instant::now());
                break;
            }
            if failing_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(3) {
                if let Some((connection, _)) = publisher.take() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), connection.close(200, "replaced".into())).await;
                }
                failing_since = None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        next[entity] += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if let Some((connection, _)) = publisher {
        let _ = connection.close(200, "done".into()).await;
    }
    (i, confirms)
}

/// One API client: audit commands on entities of its own, one at a time. (entity id, status,
/// instant answered).
async fn api_client(
    api: &TestApi,
    token: &str,
    client: usize,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<(String, u16, Instant)> {
    let mut outcomes = Vec::new();
    let mut n = 0;
    while !stop.is_cancelled() {
        let entity_id = format!("api-{client}-{n}");
        n += 1;
        let response = api
            .request(Method::POST, "/auditLogs", token)
            .json(&json!({"entity": "chaos", "entityId": entity_id, "action": "hit"}))
            .send()
            .await;
        let status = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        outcomes.push((entity_id, status, Instant::now()));
        tokio::time::sleep(Duration::from_millis(if status == 202 { 20 } else { 100 })).await;
    }
    outcomes
}

/// The longest time between two successes from `from` on, in ms: how long the load did not get
/// through around a fault.
fn longest_gap(successes: &[Instant], from: Instant, to: Instant) -> u128 {
    let mut around: Vec<Instant> = successes.iter().copied().filter(|t| *t >= from && *t <= to).collect();
    around.sort();
    let mut previous = from;
    let mut gap = 0;
    for t in around {
        gap = gap.max(t.duration_since(previous).as_millis());
        previous = t;
    }
    gap.max(to.duration_since(previous).as_millis())
}

fn inversions(applied: &[u64]) -> usize {
    let mut count = 0;
    for (i, earlier) in applied.iter().enumerate() {
        count += applied[i + 1..].iter().filter(|later| *later < earlier).count();
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_commands_leader_killed_then_a_rolling_restart_lose_nothing_and_apply_each_event_once() {
    // The test process's own log (the API, the publishers, lapin): kept for a look after a failure.
    let kept = std::env::temp_dir().join("drill-rabbitmq-cluster");
    let _ = std::fs::create_dir_all(&kept);
    if let Ok(file) = std::fs::File::create(kept.join("test.log")) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,lapin=debug"))
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .try_init();
    }
    let mut cluster = RabbitMqCluster::start(3).await;
    let env = TestEnv::on_broker(&cluster.url()).await;
    let commands = env.names().work_queue(WorkQueue::Commands);
    let replicas = cluster.members_of(&commands).await;
    assert_eq!(replicas, 3, "a quorum queue gets a member on each of 3 nodes by default");

    let workers = tokio::sync::Mutex::new(vec![
        WorkerProcess::start(&env.config, &LAYOUT),
        WorkerProcess::start(&env.config, &LAYOUT),
    ]);
    for worker in workers.lock().await.iter() {
        worker.wait_ready().await;
    }
    // What Kubernetes does: a worker that exits is started again (its exit and the log lines
    // before it are kept).
    let mut exits: Vec<String> = Vec::new();
    let api = TestApi::start(&env.config).await;
    let service = api.user(Role::Service).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    let timeline = Mutex::new(Timeline::default());
    let clients = futures_util::future::join_all((0..3).map(|c| api_client(&api, &service.token, c, &stop)));
    let spring = spring_publisher(&env, &stop);
    let faults = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let leader = cluster.leader_of(&commands).await.expect("the commands queue has a leader");
        let killed_at = Instant::now();
        cluster.kill(leader);
        let new_leader = loop {
            if let Some(l) = cluster.leader_of(&commands).await
                && l != leader
            {
                break l;
            }
            assert!(killed_at.elapsed() < Duration::from_secs(60), "no new leader within 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let elected_in = killed_at.elapsed();
        tokio::time::sleep(Duration::from_secs(12)).await;
        cluster.restart(leader).await;
        timeline.lock().expect("lock").faults.push((
            format!("sigkill-leader(node {leader}, new leader node {new_leader} in {}ms)", elected_in.as_millis()),
            since(killed_at),
            since(Instant::now()),
        ));
        for node in 0..3 {
            cluster.wait_not_quorum_critical(node, Duration::from_secs(90)).await;
            let from = Instant::now();
            cluster.stop(node).await;
            cluster.restart(node).await;
            timeline.lock().expect("lock").faults.push((
                format!("rolling-restart(node {node})"),
                since(from),
                since(Instant::now()),
            ));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
    };
    let drained = tokio_util::sync::CancellationToken::new();
    let supervise = async {
        while !drained.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut workers = workers.lock().await;
            for worker in workers.iter_mut() {
                if let Some(status) = worker.wait_exit(Duration::ZERO).await {
                    let said = worker.log();
                    let reason = said.lines().rev().find(|l| l.contains("ERROR")).unwrap_or("").to_string();
                    exits.push(format!(
                        "{:.1}s {status}: {}",
                        since(Instant::now()),
                        reason.chars().take(400).collect::<String>()
                    ));
                    let _ = std::fs::write(kept.join(format!("worker-exited-{}.log", exits.len())), said);
                    *worker = WorkerProcess::start(&env.config, &LAYOUT);
                }
            }
        }
    };
    let load_and_drain = async {
        let (outcomes, (spring_sent, spring_confirms), ()) = tokio::join!(clients, spring, faults);
        let ended = Instant::now();
        let outcomes: Vec<(String, u16, Instant)> = outcomes.into_iter().flatten().collect();
        // Drain: every 202 and every confirmed Spring message applied.
        let accepted = outcomes.iter().filter(|(_, s, _)| *s == 202).count();
        env.wait_count(
            "select count(distinct entity_id) from audit_log where entity = 'chaos'",
            accepted as i64,
            Duration::from_secs(120),
        )
        .await;
        env.wait_count(
            "select count(distinct concat(entity_id, '/', json_value(details, '$.seq'))) from audit_log where entity = 'ordered'",
            spring_confirms.len() as i64,
            Duration::from_secs(120),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        drained.cancel();
        (outcomes, spring_sent, spring_confirms, ended)
    };
    let ((outcomes, spring_sent, spring_confirms, ended), ()) = tokio::join!(load_and_drain, supervise);
    let accepted: Vec<&String> = outcomes.iter().filter(|(_, s, _)| *s == 202).map(|(e, _, _)| e).collect();
    let spring_confirmed = spring_confirms.len();

    // The API's commands.
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select entity_id, count(*) from audit_log where entity = 'chaos' group by entity_id")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    let applied: HashMap<String, i64> = rows.into_iter().collect();
    let api_lost = accepted.iter().filter(|e| !applied.contains_key(e.as_str())).count();
    let api_duplicated: i64 = applied.values().map(|n| n - 1).sum();
    let refused: Vec<f64> = outcomes.iter().filter(|(_, s, _)| *s == 503).map(|(_, _, t)| since(*t)).collect();
    let other: Vec<u16> = outcomes.iter().map(|(_, s, _)| *s).filter(|s| *s != 202 && *s != 503).collect();

    // The Spring stream, in order per entity.
    let stream: Vec<(String, Option<String>)> =
        sqlx::query_as("select entity_id, details from audit_log where entity = 'ordered' order by seq")
            .fetch_all(&env.pool)
            .await
            .expect("the stream's records");
    let mut per_entity: HashMap<String, Vec<u64>> = HashMap::new();
    let mut distinct = HashSet::new();
    for (entity, details) in &stream {
        let details: Value = serde_json::from_str(details.as_deref().unwrap_or("null")).expect("details are JSON");
        let seq = details["seq"].as_u64().expect("each record carries its seq");
        distinct.insert((entity.clone(), seq));
        per_entity.entry(entity.clone()).or_default().push(seq);
    }
    let out_of_order: usize = per_entity.values().map(|seqs| inversions(seqs)).sum();

    let timeline = timeline.into_inner().expect("lock");
    let api_successes: Vec<Instant> = outcomes.iter().filter(|(_, s, _)| *s == 202).map(|(_, _, t)| *t).collect();
    let mut recovery = Vec::new();
    for (what, from, to) in &timeline.faults {
        let from_instant = started + Duration::from_secs_f64(*from);
        let to_instant = (started + Duration::from_secs_f64(*to + 10.0)).min(ended);
        recovery.push(format!(
            "{what}@{from:.1}-{to:.1}s:api-gap={}ms,spring-gap={}ms",
            longest_gap(&api_successes, from_instant, to_instant),
            longest_gap(&spring_confirms, from_instant, to_instant)
        ));
    }
    // A 503 is right only while no node can confirm: from a node's loss until the API's link is
    // on another node (lapin's reconnection, or a new link after 10 s when it stalls).
    let outside: Vec<f64> = refused
        .iter()
        .copied()
        .filter(|t| !timeline.faults.iter().any(|(_, from, _)| *t >= *from && *t <= *from + REFUSALS_WITHIN))
        .collect();

    let api_tally = Tally {
        scenario: "rabbitmq cluster: api commands",
        sent: outcomes.len(),
        confirmed: accepted.len(),
        applied: applied.len(),
        duplicated: api_duplicated as usize,
        lost: api_lost,
        dead_lettered: env.count("select count(*) from dead_letters").await as usize,
        out_of_order: None,
        notes: Vec::new(),
    }
    .note(format!(
        "503={} other={:?} 503-outside-faults={} applied-despite-503={}",
        refused.len(),
        other,
        outside.len(),
        // A publish whose confirm did not come in time answers 503 and may still be applied
        // (once): what a client's retry with Idempotency-Key is for.
        outcomes.iter().filter(|(e, s, _)| *s == 503 && applied.contains_key(e)).count()
    ));
    let spring_tally = Tally {
        scenario: "rabbitmq cluster: spring-style stream",
        sent: spring_sent,
        confirmed: spring_confirmed,
        applied: distinct.len(),
        duplicated: stream.len() - distinct.len(),
        lost: spring_confirmed.saturating_sub(distinct.len()),
        dead_lettered: env.count("select count(*) from dead_letters").await as usize,
        out_of_order: Some(out_of_order),
        notes: Vec::new(),
    }
    .note(format!("entities={} worker-restarts={}", per_entity.len(), exits.len()));
    println!("RECOVERY {} total={:.1}s", recovery.join(" "), since(ended));
    // The workers' logs stay too (the processes' own are removed on drop).
    let workers = workers.into_inner();
    for exit in &exits {
        println!("worker exited and was started again: {exit}");
    }
    for (n, worker) in workers.iter().enumerate() {
        println!("worker {n}: readiness {}", worker.readiness().await);
        let _ = std::fs::write(kept.join(format!("worker-{n}.log")), worker.log());
    }
    let logs = workers.iter().map(WorkerProcess::log_tail).collect::<Vec<_>>().join("\n");
    api_tally.check();
    spring_tally.check();
    assert_eq!(api_tally.dead_lettered, 0, "a node loss costs no message its life: {api_tally}\n{logs}");
    assert!(other.is_empty(), "only 202 or 503: {api_tally}");
    assert!(outside.is_empty(), "503s outside the faults at {outside:?}: {api_tally}");
    assert!(accepted.len() > 100 && spring_confirmed > 100, "the load got through: {api_tally} {spring_tally}");
    api.stop().await;
    drop(env);
}
