//! Worker throughput: one transaction per event (N=1, the baseline) against batches (N=100), in
//! the same run on the same machine. The queue is filled first, then a worker drains it; the
//! clock stops when every event is in the inbox and every notification has left the outbox.
//!
//! `make bench` (or `cargo bench -p automation-worker --bench throughput`). `BENCH_EVENTS` sets
//! the number of events per run (default 20000); `BENCH_BATCHES` the batch sizes (default "1,100").

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use automation_shared::messaging::{Outgoing, cloud_event_properties};
use automation_shared::testing::TestEnv;
use automation_worker::service::{self, Worker};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Run {
    batch: usize,
    events: usize,
    seconds: f64,
}

async fn run(batch: usize, events: usize) -> Run {
    let mut env = TestEnv::new().await;
    env.config.worker.batch_size = batch;
    env.config.worker.prefetch = (batch * 2).max(200) as u16;
    env.config.database.max_connections = 10;
    if let Some(consumers) = std::env::var("BENCH_CONSUMERS").ok().and_then(|v| v.parse().ok()) {
        env.config.worker.consumers = consumers;
    }
    let workflow = Uuid::new_v4();
    sqlx::query("insert into workflows (id, name, status, version) values (?, 'bench', 'ACTIVE', 1)")
        .bind(workflow.to_string())
        .execute(&env.pool)
        .await
        .expect("seed workflow");

    let exchange = env.names().events();
    let bodies: Vec<(String, Vec<u8>)> = (0..events)
        .map(|i| {
            let id = Uuid::new_v4().to_string();
            let body = json!({
                "specversion": "1.0", "id": id, "source": "/bench", "type": "approval.requested",
                "data": {"workflowId": workflow, "title": format!("request {i}"), "amount": (i % 5000) as f64 + 0.5,
                         "currency": "EUR", "requesterId": Uuid::new_v4()}
            });
            (id, body.to_string().into_bytes())
        })
        .collect();
    for chunk in bodies.chunks(1000) {
        let messages = chunk
            .iter()
            .map(|(id, body)| Outgoing {
                exchange: &exchange,
                routing_key: "approval.requested",
                body,
                properties: cloud_event_properties(id, "approval.requested"),
                mandatory: false,
            })
            .collect();
        env.publisher.publish_all(messages).await.expect("queue filled");
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let worker = Worker::connect(Arc::new(env.config.clone())).await.expect("worker");
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let handle = tokio::spawn(service::run(worker, listener, shutdown.clone()));
    loop {
        let processed: i64 =
            sqlx::query_scalar("select count(*) from inbox").fetch_one(&env.pool).await.expect("count");
        let unsent: i64 = sqlx::query_scalar("select count(*) from outbox").fetch_one(&env.pool).await.expect("count");
        if processed as usize >= events && unsent == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the run did not finish in 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = handle.await;
    // Where the time went, from the worker's own histograms (this process's recorder).
    let rendered = automation_shared::telemetry::metrics().render();
    for name in ["automation_worker_batch_seconds", "automation_worker_apply_seconds"] {
        let value = |suffix: &str| {
            rendered
                .lines()
                .find(|l| l.starts_with(&format!("{name}_{suffix}")))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        eprintln!("  {name}: {} observations, {:.2} s in total (cumulative over runs)", value("count"), value("sum"));
    }
    let applied: i64 = sqlx::query_scalar("select count(*) from approvals").fetch_one(&env.pool).await.expect("count");
    assert_eq!(applied as usize, events, "every event applied once");
    Run { batch, events, seconds }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `RUST_LOG=sqlx::query=debug` shows every statement with its time.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let events: usize = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| "1,100".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let runs: Vec<Run> = runtime.block_on(async {
        let mut runs = Vec::new();
        for batch in &batches {
            eprintln!("N={batch}: filling the queue with {events} approval.requested events, then draining it…");
            runs.push(run(*batch, events).await);
        }
        runs
    });
    let baseline = runs.first().map(|r| r.events as f64 / r.seconds).unwrap_or(1.0);
    println!("\nworker throughput (approval.requested: applied, audited, announced)");
    println!("{:>8} {:>10} {:>10} {:>12} {:>10}", "batch N", "events", "seconds", "events/s", "vs N=first");
    for r in &runs {
        let rate = r.events as f64 / r.seconds;
        println!("{:>8} {:>10} {:>10.2} {:>12.0} {:>9.1}x", r.batch, r.events, r.seconds, rate, rate / baseline);
    }
    let summary: Vec<_> = runs
        .iter()
        .map(|r| json!({"batch": r.batch, "events": r.events, "seconds": r.seconds, "eventsPerSecond": r.events as f64 / r.seconds}))
        .collect();
    println!("{}", json!({"bench": "worker-throughput", "runs": summary}));
}
