//! Automations: named tasks run from the tasks queue, with retries, countdowns, cancellation and
//! schedules that fire once per tick however many workers run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automation_shared::config::ScheduleConfig;
use automation_shared::testing::TestEnv;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::runs::{publish_start, queued_run, state_of};
use crate::support::{TestWorker, event};

/// A webhook receiver that answers 500 a given number of times, then 200.
#[derive(Clone, Default)]
struct Receiver {
    fail_first: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    receiver.seen.lock().expect("lock").push((headers, body));
    let failing = receiver.fail_first.load(Ordering::SeqCst);
    if failing > 0 {
        receiver.fail_first.store(failing - 1, Ordering::SeqCst);
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

async fn start_receiver(fail_first: usize) -> (String, Receiver) {
    let receiver = Receiver { fail_first: Arc::new(AtomicUsize::new(fail_first)), ..Receiver::default() };
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

async fn request(env: &TestEnv, data: Value) -> Uuid {
    let run = Uuid::new_v4();
    let mut data = data;
    data["runId"] = json!(run);
    let e = event("automation.requested", data);
    env.publish_structured(&e).await;
    assert_eq!(env.wait_processed(e["id"].as_str().expect("id")).await, "applied");
    run
}

/// State, result, attempts, started and created, as `automation_runs` holds them.
type RunRow = (String, Option<sqlx::types::Json<Value>>, u32, Option<DateTime<Utc>>, DateTime<Utc>);

async fn wait_state(env: &TestEnv, run: Uuid, state: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let row: Option<RunRow> =
            sqlx::query_as("select state, result, attempts, started_at, created_at from automation_runs where id = ?")
                .bind(run.to_string())
                .fetch_optional(&env.pool)
                .await
                .expect("query");
        if let Some((current, result, attempts, started, created)) = row
            && current == state
        {
            return json!({"result": result.map(|r| r.0), "attempts": attempts, "startedAt": started, "createdAt": created});
        }
        assert!(tokio::time::Instant::now() < deadline, "run {run} never became {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn check_signatures(receiver: &Receiver, secret: &str, run: Uuid) {
    for (headers, body) in receiver.seen.lock().expect("lock").iter() {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let timestamp: i64 = header("x-automation-timestamp").parse().expect("a timestamp");
        assert_eq!(
            header("x-automation-signature"),
            automation_worker::tasks::webhook::signature(secret, timestamp, body)
        );
        assert_eq!(header("idempotency-key"), run.to_string(), "one key for every try of a run");
        assert_eq!(header("content-type"), "application/json");
    }
}

#[tokio::test]
async fn webhook_call_retries_a_server_that_fails_twice_and_then_succeeds() {
    let mut env = TestEnv::new().await;
    env.config.tasks.webhook_secret = Some("a-webhook-secret-for-the-tests-only".into());
    let _worker = TestWorker::start(&env.config).await;
    let tap = env.notifications().await;
    let (url, receiver) = start_receiver(2).await;
    let run =
        request(&env, json!({"automation": "webhook.call", "params": {"url": url, "payload": {"hello": "world"}}}))
            .await;
    let done = wait_state(&env, run, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done["result"]["tries"], 3);
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["attempts"], 1);
    assert_eq!(receiver.seen.lock().expect("lock").len(), 3);
    assert_eq!(
        serde_json::from_slice::<Value>(&receiver.seen.lock().expect("lock")[0].1).expect("json"),
        json!({"hello": "world"})
    );
    check_signatures(&receiver, "a-webhook-secret-for-the-tests-only", run);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !tap.all().iter().any(|n| n["type"] == "automation.succeeded") {
        assert!(tokio::time::Instant::now() < deadline, "automation.succeeded is announced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_run_whose_attempt_fails_is_retried_later_without_holding_a_consumer() {
    let mut env = TestEnv::new().await;
    env.config.tasks.webhook_secret = Some("a-webhook-secret-for-the-tests-only".into());
    let _worker = TestWorker::start(&env.config).await;
    // Three tries fail the first attempt; the second attempt, five seconds later, gets through.
    let (url, receiver) = start_receiver(4).await;
    let run = request(&env, json!({"automation": "webhook.call", "params": {"url": url}})).await;
    wait_state(&env, run, "retrying", Duration::from_secs(20)).await;
    // Meanwhile another task runs at once.
    let (other_url, _) = start_receiver(0).await;
    let other = request(&env, json!({"automation": "webhook.call", "params": {"url": other_url}})).await;
    wait_state(&env, other, "succeeded", Duration::from_secs(10)).await;
    let done = wait_state(&env, run, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(receiver.seen.lock().expect("lock").len(), 5);
}

#[tokio::test]
async fn a_countdown_run_starts_after_its_delay_while_other_tasks_keep_flowing() {
    let mut env = TestEnv::new().await;
    env.config.tasks.webhook_secret = Some("a-webhook-secret-for-the-tests-only".into());
    let _worker = TestWorker::start(&env.config).await;
    let (url, receiver) = start_receiver(0).await;
    let delayed = request(
        &env,
        json!({"automation": "webhook.call", "params": {"url": url, "payload": {"n": "later"}}, "countdownSeconds": 3}),
    )
    .await;
    let state: String = sqlx::query_scalar("select state from automation_runs where id = ?")
        .bind(delayed.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(state, "scheduled");
    let now =
        request(&env, json!({"automation": "webhook.call", "params": {"url": url, "payload": {"n": "now"}}})).await;
    wait_state(&env, now, "succeeded", Duration::from_secs(10)).await;
    assert_eq!(receiver.seen.lock().expect("lock").len(), 1, "the delayed run has not started yet");
    let done = wait_state(&env, delayed, "succeeded", Duration::from_secs(20)).await;
    let created: DateTime<Utc> = serde_json::from_value(done["createdAt"].clone()).expect("time");
    let started: DateTime<Utc> = serde_json::from_value(done["startedAt"].clone()).expect("time");
    assert!(started - created >= chrono::Duration::seconds(3), "started {started}, created {created}");
}

#[tokio::test]
async fn a_cancelled_run_never_starts() {
    let env = TestEnv::new().await;
    let _worker = TestWorker::start(&env.config).await;
    let (url, receiver) = start_receiver(0).await;
    let run = request(&env, json!({"automation": "webhook.call", "params": {"url": url}, "countdownSeconds": 2})).await;
    let cancel = event("automation.cancelled", json!({"runId": run}));
    env.publish_structured(&cancel).await;
    assert_eq!(env.wait_processed(cancel["id"].as_str().expect("id")).await, "applied");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let state: String = sqlx::query_scalar("select state from automation_runs where id = ?")
        .bind(run.to_string())
        .fetch_one(&env.pool)
        .await
        .expect("row");
    assert_eq!(state, "cancelled");
    assert!(receiver.seen.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn a_schedule_fires_once_per_tick_with_two_workers_running() {
    let mut env = TestEnv::new().await;
    env.config.tasks.schedules = vec![ScheduleConfig {
        name: "every-second".into(),
        cron: "* * * * * *".into(),
        automation: "insights.recompute".into(),
        params: None,
        enabled: true,
    }];
    let first = TestWorker::start(&env.config).await;
    let second = TestWorker::start(&env.config).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    first.stop().await.expect("stop");
    second.stop().await.expect("stop");
    let ticks = env.count("select count(*) from schedule_ticks where schedule_name = 'every-second'").await;
    let runs = env.count("select count(*) from automation_runs where schedule_name = 'every-second'").await;
    let distinct =
        env.count("select count(distinct tick_at) from schedule_ticks where schedule_name = 'every-second'").await;
    assert!(ticks >= 4, "it fired every second: {ticks}");
    assert_eq!(runs, ticks, "one run per tick");
    assert_eq!(distinct, ticks, "no tick fired twice");
    let seconds: Vec<DateTime<Utc>> =
        sqlx::query_scalar("select tick_at from schedule_ticks where schedule_name = 'every-second' order by tick_at")
            .fetch_all(&env.pool)
            .await
            .expect("rows");
    assert!(seconds.windows(2).all(|w| w[1] - w[0] == chrono::Duration::seconds(1)), "consecutive ticks: {seconds:?}");
}

/// A second, fresh copy of a start message (a republished outbox row) while the attempt runs:
/// the attempt runs once. Only a redelivered message takes over a `running` attempt.
#[tokio::test]
async fn a_second_copy_of_a_start_message_does_not_run_the_attempt_twice() {
    let mut env = TestEnv::new().await;
    env.config.tasks.webhook_secret = Some("a-webhook-secret-for-the-tests-only".into());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let calls = counted.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let run = queued_run(&env, "webhook.call", json!({"url": url})).await;
    publish_start(&env, run.id, 1).await;
    publish_start(&env, run.id, 1).await;
    let _worker = TestWorker::start(&env.config).await;
    let done = wait_state(&env, run.id, "succeeded", Duration::from_secs(30)).await;
    assert_eq!(done["attempts"], 1);
    // The copy is settled without running (it may come after the attempt finished).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the webhook was called once");
    assert_eq!(state_of(&env, run.id).await, Some(automation_shared::db::runs::RunState::Succeeded));
}

/// Publishes `automation.requested` with W3C trace context in its AMQP headers.
async fn request_traced(env: &TestEnv, data: Value, traceparent: &str) -> Uuid {
    let run = Uuid::new_v4();
    let mut data = data;
    data["runId"] = json!(run);
    let e = event("automation.requested", data);
    let mut headers = lapin::types::FieldTable::default();
    headers.insert("traceparent".into(), lapin::types::AMQPValue::LongString(traceparent.as_bytes().to_vec().into()));
    headers.insert("tracestate".into(), lapin::types::AMQPValue::LongString(b"congo=t61rcWkgMzE".to_vec().into()));
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_headers(headers);
    env.publish("automation.requested", properties, e.to_string().as_bytes()).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_call_sends_the_trace_of_the_event_that_asked_for_the_run_also_after_a_countdown() {
    let mut env = TestEnv::new().await;
    env.config.tasks.webhook_secret = Some("a-webhook-secret-for-the-tests-only".into());
    // The tracer makes and carries trace context whether or not it exports.
    let _traces = automation_shared::telemetry::init_tracing_with(
        &env.config,
        "automation-worker",
        &automation_shared::traces::Export::Off,
        true,
        std::io::sink,
    );
    let _worker = TestWorker::start(&env.config).await;
    let (url, receiver) = start_receiver(0).await;
    let now = "0af7651916cd43dd8448eb211c80319c";
    let run = request_traced(
        &env,
        json!({"automation": "webhook.call", "params": {"url": url, "payload": {"n": "now"}}}),
        &format!("00-{now}-b7ad6b7169203331-01"),
    )
    .await;
    wait_state(&env, run, "succeeded", Duration::from_secs(30)).await;
    // A countdown: the scheduler starts the attempt later, from the run's row.
    let later = "5e1b2a3c4d5e6f708192a3b4c5d6e7f8";
    let run = request_traced(
        &env,
        json!({"automation": "webhook.call", "params": {"url": url, "payload": {"n": "later"}}, "countdownSeconds": 1}),
        &format!("00-{later}-a1b2c3d4e5f60718-01"),
    )
    .await;
    wait_state(&env, run, "succeeded", Duration::from_secs(30)).await;
    let seen = receiver.seen.lock().expect("lock");
    assert_eq!(seen.len(), 2);
    for ((headers, _), trace) in seen.iter().zip([now, later]) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let parent = header("traceparent");
        assert!(parent.starts_with(&format!("00-{trace}-")), "the webhook continues the event's trace: {parent:?}");
        assert!(!parent.contains("b7ad6b7169203331") && !parent.contains("a1b2c3d4e5f60718"), "from the run: {parent}");
        assert_eq!(header("tracestate"), "congo=t61rcWkgMzE");
    }
}
