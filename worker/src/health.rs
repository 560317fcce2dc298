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

use crate::service::Worker;

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
        metrics::gauge!("automation_worker_in_flight").set(now as f64);
    }

    pub fn release(&self, n: usize) {
        let now = self.in_flight.fetch_sub(n as i64, Ordering::Relaxed) - n as i64;
        metrics::gauge!("automation_worker_in_flight").set(now as f64);
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

pub fn router(worker: Arc<Worker>) -> Router {
    Router::new()
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/readiness", get(ready))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(worker)
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(worker): State<Arc<Worker>>) -> Response {
    let database = if worker.health.database_down.load(Ordering::Relaxed) {
        Err("unreachable; consumers are paused until it answers".to_string())
    } else {
        match tokio::time::timeout(Duration::from_secs(2), automation_shared::db::ping(&worker.pool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 2 s".to_string()),
        }
    };
    let broker = if worker.connection.status().connected() {
        if worker.connection.status().blocked() { Err("blocked by a resource alarm".to_string()) } else { Ok(()) }
    } else {
        Err("disconnected; reconnecting".to_string())
    };
    let draining = worker.health.draining.load(Ordering::Relaxed);
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => json!({"status": "ok"}),
        Err(e) => json!({"status": "unavailable", "error": e}),
    };
    let ok = database.is_ok() && broker.is_ok() && !draining;
    let body = json!({
        "status": if ok { "ok" } else if draining { "draining" } else { "unavailable" },
        "dependencies": {"mysql": describe(&database), "rabbitmq": describe(&broker)},
        "inFlight": worker.health.in_flight(),
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn render_metrics() -> Response {
    let body = automation_shared::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
