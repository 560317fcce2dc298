//! OpenTelemetry: one trace from the HTTP request through the broker and the worker to the
//! notification and the `Prefer: wait` wake, exported over OTLP/HTTP to a receiver in the test;
//! and the log lines of a delivery, which name its trace and its event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::telemetry;
use automation_shared::testing::TestEnv;
use automation_shared::traces::Export;
use axum::body::Bytes;
use axum::extract::State;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Captured, TestApi, TestWorker, json};

/// The spans received, with the `service.name` of their resource.
type Kept = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP (protobuf) traces endpoint on 127.0.0.1 that keeps what it is sent.
struct Receiver {
    url: String,
    spans: Kept,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Kept = Kept::default();
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(receive)).with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/v1/traces", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, spans }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().expect("lock").clone()
    }
}

async fn receive(State(spans): State<Kept>, body: Bytes) -> impl axum::response::IntoResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut kept = spans.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            kept.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
        }
    }
    (axum::http::StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| match &v.value {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        Some(AnyValue::IntValue(i)) => Some(i.to_string()),
        Some(AnyValue::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    })
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_post_approvals_through_the_worker_to_the_notification_and_the_wake() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let receiver = Receiver::start().await;
    let env = TestEnv::new().await;
    let traces = telemetry::init_tracing_with(
        &env.config,
        "automation-engine",
        &Export::To(receiver.url.clone()),
        true,
        Captured::default(),
    );
    assert!(traces.exporting());
    let worker = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let requester = api.user(Role::Requester).await;
    let r = api
        .request(Method::POST, "/workflows", &admin.token)
        .header("prefer", "wait=10")
        .json(&json!({"name": "Purchases"}))
        .send()
        .await
        .expect("answer");
    let (status, workflow) = json(r).await;
    assert_eq!(status, 200, "{workflow}");

    let r = api
        .request(Method::POST, "/approvals", &requester.token)
        .header("prefer", "wait=10")
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .json(&json!({"workflowId": workflow["id"], "title": "Laptop", "amount": 1299.99, "currency": "EUR"}))
        .send()
        .await
        .expect("answer");
    let (status, approval) = json(r).await;
    assert_eq!(status, 200, "{approval}");
    // The request's span ends once its answer is written; then flush.
    tokio::time::sleep(Duration::from_millis(300)).await;
    traces.shutdown().await;
    api.stop().await;
    worker.stop().await;

    let spans = receiver.spans();
    let trace: Vec<&Span> = spans.iter().map(|(_, s)| s).filter(|s| hex(&s.trace_id) == CALLER_TRACE).collect();
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    let one = |name: &str| -> &Span {
        let found: Vec<&&Span> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name:?} span in the caller's trace; it has {names:?}");
        found[0]
    };
    let prefix = &env.config.amqp.prefix;

    let server = one("POST /approvals");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN, "the server span continues the caller's");
    assert_eq!(server.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(attribute(server, "http.route").as_deref(), Some("/approvals"));
    assert_eq!(attribute(server, "http.response.status_code").as_deref(), Some("200"));

    let publish = one(&format!("publish {prefix}.events"));
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(publish.parent_span_id, server.span_id, "the publish is part of the request");
    assert_eq!(attribute(publish, "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attribute(publish, "messaging.destination.name"), Some(format!("{prefix}.events")));
    assert_eq!(attribute(publish, "messaging.operation.type").as_deref(), Some("send"));
    let event_id = attribute(publish, "messaging.message.id").expect("the publish names its message");

    let delivery = one(&format!("process {prefix}.commands"));
    assert_eq!(delivery.kind, SpanKind::Consumer as i32);
    assert_eq!(delivery.parent_span_id, publish.span_id, "the worker continues the publisher's context");
    assert_eq!(attribute(delivery, "messaging.message.id").as_deref(), Some(event_id.as_str()));
    assert_eq!(attribute(delivery, "messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(delivery.trace_state, "congo=t61rcWkgMzE", "tracestate travels with the message");

    let batch = one(&format!("apply {prefix}.commands"));
    assert_eq!(batch.parent_span_id, delivery.span_id);
    let handler = one("handle approval.requested");
    assert_eq!(handler.parent_span_id, batch.span_id);
    let commit = one("commit");
    assert_eq!(commit.parent_span_id, batch.span_id);

    let outbox = one("publish outbox");
    assert_eq!(outbox.parent_span_id, delivery.span_id, "the relay publishes on behalf of the event");
    let notification = one(&format!("publish {prefix}.notifications"));
    assert_eq!(notification.kind, SpanKind::Producer as i32);
    assert_eq!(notification.parent_span_id, delivery.span_id);
    assert_eq!(
        attribute(notification, "messaging.rabbitmq.destination.routing_key").as_deref(),
        Some("approval.created")
    );

    let wake = one("wake Prefer: wait");
    assert_eq!(wake.kind, SpanKind::Consumer as i32);
    assert_eq!(wake.parent_span_id, notification.span_id, "the API is woken by that notification");
    assert_eq!(attribute(wake, "event.id").as_deref(), Some(event_id.as_str()));
    assert!(spans.iter().all(|(service, _)| service == "automation-engine"), "the resource names the service");
}

/// A structured CloudEvent from a service publisher, with its trace context in the AMQP headers.
async fn publish_traced(env: &TestEnv, event: &Value, traceparent: &str) {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(LongString::from(traceparent.as_bytes().to_vec())),
    );
    let properties = BasicProperties::default()
        .with_content_type("application/cloudevents+json".into())
        .with_delivery_mode(automation_shared::messaging::PERSISTENT)
        .with_headers(headers);
    env.publish(event["type"].as_str().expect("type"), properties, event.to_string().as_bytes()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_written_while_a_delivery_is_handled_carry_its_trace_id_and_event_id() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut env = TestEnv::new().await;
    env.config.log_level = "info,automation_worker=debug".into();
    let logs = Captured::default();
    let _traces = telemetry::init_tracing_with(&env.config, "automation-worker", &Export::Off, true, logs.clone());
    let worker = TestWorker::start(&env.config).await;

    let good_trace = "0af7651916cd43dd8448eb211c80319c";
    let good = json!({
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/spring/invoices",
        "type": "audit.recorded",
        "data": {"entity": "invoice", "entityId": "inv-7", "action": "exported"}
    });
    publish_traced(&env, &good, &format!("00-{good_trace}-b7ad6b7169203331-01")).await;
    let poison_trace = "5e1b2a3c4d5e6f708192a3b4c5d6e7f8";
    let poison = json!({
        "specversion": "1.0", "id": uuid::Uuid::new_v4().to_string(), "source": "/spring/orders",
        "type": "approval.requested", "data": {"workflowId": "not-a-uuid", "title": "t"}
    });
    publish_traced(&env, &poison, &format!("00-{poison_trace}-a1b2c3d4e5f60718-01")).await;
    let good_id = good["id"].as_str().expect("id");
    let poison_id = poison["id"].as_str().expect("id");
    assert_eq!(env.wait_processed(good_id).await, "applied");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !logs.lines().iter().any(|l| l["event.id"] == poison_id) {
        assert!(tokio::time::Instant::now() < deadline, "the poison message was not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;

    let lines = logs.lines();
    let of = |id: &str| lines.iter().filter(|l| l["event.id"] == id).collect::<Vec<_>>();
    let good_lines = of(good_id);
    assert!(good_lines.iter().any(|l| l["message"] == "event settled"), "{good_lines:#?}");
    for line in &good_lines {
        assert_eq!(line["trace_id"], good_trace, "{line}");
    }
    let poison_lines = of(poison_id);
    assert!(
        poison_lines.iter().any(|l| l["message"] == "dead-lettering a message that cannot be taken"),
        "{poison_lines:#?}"
    );
    for line in &poison_lines {
        assert_eq!(line["trace_id"], poison_trace, "{line}");
    }
    // Whatever else was written inside a delivery's spans names its trace and event too.
    let inside: Vec<&Value> =
        lines.iter().filter(|l| matches!(l["span"].as_str(), Some("event" | "batch" | "handle" | "commit"))).collect();
    assert!(!inside.is_empty());
    for line in inside {
        assert!(line["trace_id"].as_str().is_some_and(|t| t.len() == 32), "{line}");
        assert!(line["event.id"].as_str().is_some_and(|e| !e.is_empty()), "{line}");
    }
}

/// The binary as deployed, configured by the standard variables only.
/// The API binary as a child process, killed if the test ends before it does (a failed
/// assertion): left running, it would outlive the test's database and declare its queues again.
struct ApiProcess(std::process::Child);

impl Drop for ApiProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_api(env: &TestEnv, port: u16, endpoint: &str, log: &std::path::Path) -> ApiProcess {
    let file = std::fs::File::create(log).expect("log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_automation-api"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", env.config.database.url.clone().expect("url"))
        .env("AMQP_URL", &env.config.amqp.url)
        .env("AUTOMATION_AMQP__PREFIX", &env.config.amqp.prefix)
        .env("API_PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        // Nothing leaves on a timer within the test: what arrives was flushed at SIGTERM.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("the API starts");
    ApiProcess(child)
}

/// SIGTERM, then how long the process took to exit and how.
async fn terminate(api: &mut ApiProcess, log: &std::path::Path) -> (Duration, std::process::ExitStatus) {
    let child = &mut api.0;
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let signalled = tokio::time::Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (signalled.elapsed(), status);
        }
        if signalled.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGTERM: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn serve_some_requests(port: u16) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
    let started = tokio::time::Instant::now();
    while client.get(format!("http://127.0.0.1:{port}/health/ready")).send().await.map(|r| r.status()).ok()
        != Some(reqwest::StatusCode::OK)
    {
        assert!(started.elapsed() < Duration::from_secs(20), "the API never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client.get(format!("http://127.0.0.1:{port}/health")).send().await.expect("alive");
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_exports_to_the_endpoint_the_otel_variables_name_and_flushes_at_sigterm_within_two_seconds() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let receiver = Receiver::start().await;
    let env = TestEnv::new().await;
    let port = automation_shared::testing::private_rabbitmq::free_port();
    let log = std::env::temp_dir().join(format!("automation-api-otel-{}.log", uuid::Uuid::new_v4().simple()));
    // The base endpoint: the exporter appends /v1/traces.
    let base = receiver.url.trim_end_matches("/v1/traces").to_string();
    let mut api = spawn_api(&env, port, &base, &log);
    serve_some_requests(port).await;
    let (took, status) = terminate(&mut api, &log).await;
    println!("TIMING the API exited {took:?} after SIGTERM, flushing to a live collector");
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(took < Duration::from_secs(2), "{took:?}");
    let spans = receiver.spans();
    assert!(
        spans.iter().any(|(service, s)| service == "automation-api" && s.name == "GET /health"),
        "the request's span was flushed at shutdown, from service automation-api: {:?}",
        spans.iter().map(|(service, s)| format!("{service} {}", s.name)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_delays_the_apis_exit_by_about_a_second_at_most() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Takes connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", hung.local_addr().expect("address"));
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            kept.push(socket);
        }
    });
    let env = TestEnv::new().await;
    let port = automation_shared::testing::private_rabbitmq::free_port();
    let log = std::env::temp_dir().join(format!("automation-api-otel-hung-{}.log", uuid::Uuid::new_v4().simple()));
    let mut api = spawn_api(&env, port, &endpoint, &log);
    serve_some_requests(port).await;
    let (took, status) = terminate(&mut api, &log).await;
    println!("TIMING the API exited {took:?} after SIGTERM, its collector hung");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(logs.contains("did not take the last spans in time"), "{logs}");
}
