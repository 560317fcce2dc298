//! The worker's probe endpoints: `/health` (alive), `/readiness` (MySQL and the broker answer
//! and the consumers run), `/metrics` (Prometheus), on `WORKER_PORT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use automation_shared::db::events as event_rows;
use lapin::Connection;
use sqlx::MySqlPool;

/// What the probes report, kept up to date by the consumers.
#[derive(Debug, Default)]
pub struct Health {
    /// Set while a consumer waits for MySQL to come back.
    database_down: AtomicBool,
    /// Set once SIGTERM arrived: no new work is taken.
    draining: AtomicBool,
    in_flight: AtomicI64,
}

impl Health {
    pub fn set_database_down(&self, down: bool) {
        self.database_down.store(down, Ordering::Relaxed);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Deliveries taken from the broker and not yet settled.
    pub fn hold(&self, n: usize) {
        let now = self.in_flight.fetch_add(n as i64, Ordering::Relaxed) + n as i64;
        metrics::gauge!(automation_shared::meters::WORKER_IN_FLIGHT).set(now as f64);
    }

    pub fn release(&self, n: usize) {
        let now = self.in_flight.fetch_sub(n as i64, Ordering::Relaxed) - n as i64;
        metrics::gauge!(automation_shared::meters::WORKER_IN_FLIGHT).set(now as f64);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// What readiness looks at.
#[derive(Clone)]
pub struct Readiness {
    pub health: Arc<Health>,
    pub pool: MySqlPool,
    pub connection: Arc<Connection>,
    /// How often the outbox relay sweeps: rows much older than that mean publishing is stuck.
    pub outbox_sweep: Duration,
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/readiness", get(ready))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(readiness)
}

/// What a worker still starting says on its probes: what it waits for.
#[derive(Debug, Default)]
pub struct Starting {
    broker: std::sync::Mutex<Option<String>>,
}

impl Starting {
    pub fn broker_failed(&self, error: String) {
        *self.broker.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }
}

/// The probes while the worker connects: alive, not ready.
pub fn starting_router(starting: Arc<Starting>) -> Router {
    Router::new()
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/readiness", get(not_ready_yet))
        .route("/health/ready", get(not_ready_yet))
        .route("/metrics", get(render_metrics))
        .with_state(starting)
}

async fn not_ready_yet(State(starting): State<Arc<Starting>>) -> Response {
    metrics::gauge!(automation_shared::meters::READY).set(0.0);
    let broker = starting.broker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let body = json!({
        "status": "starting",
        "dependencies": {
            "rabbitmq": {"status": "unavailable", "error": broker.unwrap_or_else(|| "connecting".to_string())},
            "mysql": {"status": "unknown", "error": "checked once the broker answers"},
        },
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    let database = if readiness.health.database_down.load(Ordering::Relaxed) {
        Err("unreachable; consumers are paused until it answers".to_string())
    } else {
        match tokio::time::timeout(Duration::from_secs(2), automation_shared::db::ping(&readiness.pool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 2 s".to_string()),
        }
    };
    let broker = if readiness.connection.status().connected() {
        if readiness.connection.status().blocked() { Err("blocked by a resource alarm".to_string()) } else { Ok(()) }
    } else {
        Err("disconnected; reconnecting".to_string())
    };
    // Publishing: what went in the outbox must come out. Rows older than a few sweeps mean the
    // worker's publishing is stuck, whatever the connection says.
    let backlog = match &database {
        Ok(()) => tokio::time::timeout(Duration::from_secs(2), event_rows::outbox_backlog(&readiness.pool)).await.ok(),
        Err(_) => None,
    };
    let stuck_after = readiness.outbox_sweep.as_secs().max(1) * 5 + 10;
    let publishing = match backlog {
        Some(Ok((rows, oldest))) if rows > 0 && oldest > stuck_after => {
            Err(format!("{rows} messages wait in the outbox, the oldest for {oldest} s: publishing is stuck"))
        }
        _ => broker.clone(),
    };
    let draining = readiness.health.draining.load(Ordering::Relaxed);
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "unavailable", "error": e}),
    };
    let ok = database.is_ok() && broker.is_ok() && publishing.is_ok() && !draining;
    metrics::gauge!(automation_shared::meters::READY).set(if ok { 1.0 } else { 0.0 });
    let mut body = json!({
        "status": if ok { "ok" } else if draining { "draining" } else { "unavailable" },
        "dependencies": {"mysql": describe(&database), "rabbitmq": describe(&broker), "publishing": describe(&publishing)},
        "inFlight": readiness.health.in_flight(),
    });
    if let Some(Ok((rows, oldest))) = backlog {
        body["outbox"] = json!({"rows": rows, "oldestSeconds": oldest});
    }
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn render_metrics() -> Response {
    let body = automation_shared::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
