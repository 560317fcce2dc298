//! Health, readiness, build information and metrics.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use utoipa::ToSchema;

use crate::app::AppState;
use crate::problem::NotAProblem;

#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    /// Always `ok` while the process runs.
    pub status: &'static str,
}

/// Liveness
///
/// 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "health", operation_id = "getHealth", security(()),
    responses((status = 200, description = "The process runs", body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { status: "ok" })
}

/// Liveness (Kubernetes path)
///
/// The same as `/health`.
#[utoipa::path(get, path = "/health/live", tag = "health", operation_id = "getLiveness", security(()),
    responses((status = 200, description = "The process runs", body = Live)))]
pub async fn live_alias() -> Json<Live> {
    live().await
}

/// Liveness (versioned path)
///
/// The same as `/health`.
#[utoipa::path(get, path = "/api/v1/health", tag = "health", operation_id = "getApiHealth", security(()),
    responses((status = 200, description = "The process runs", body = Live)))]
pub async fn live_v1() -> Json<Live> {
    live().await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DependencyStatus {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Dependencies {
    pub mysql: DependencyStatus,
    pub rabbitmq: DependencyStatus,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    pub dependencies: Dependencies,
}

/// Readiness
///
/// 200 when MySQL and the broker answer; 503 naming the one that does not.
#[utoipa::path(
    get, path = "/readiness", tag = "health", operation_id = "getReadiness", security(()),
    responses(
        (status = 200, description = "MySQL and the broker answer", body = Readiness),
        (status = 503, description = "A dependency failed; `dependencies` names it", body = Readiness),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    let mysql = match tokio::time::timeout(Duration::from_secs(2), automation_shared::db::ping(&state.pool)).await {
        Ok(Ok(())) => DependencyStatus { status: "ok", error: None },
        Ok(Err(e)) => DependencyStatus { status: "unavailable", error: Some(e.to_string()) },
        Err(_) => DependencyStatus { status: "unavailable", error: Some("no answer within 2 s".into()) },
    };
    let rabbitmq = if state.broker.is_ready() {
        DependencyStatus { status: "ok", error: None }
    } else {
        DependencyStatus { status: "unavailable", error: Some("not connected, or blocked by a resource alarm".into()) }
    };
    let ok = mysql.status == "ok" && rabbitmq.status == "ok";
    metrics::gauge!(automation_shared::meters::READY).set(if ok { 1.0 } else { 0.0 });
    let body =
        Readiness { status: if ok { "ok" } else { "unavailable" }, dependencies: Dependencies { mysql, rabbitmq } };
    let mut response = (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body)).into_response();
    // Probes and dashboards read `dependencies`: this 503 keeps its own body.
    response.extensions_mut().insert(NotAProblem);
    response
}

/// Readiness (Kubernetes path)
///
/// The same as `/readiness`.
#[utoipa::path(
    get, path = "/health/ready", tag = "health", operation_id = "getHealthReady", security(()),
    responses(
        (status = 200, description = "MySQL and the broker answer", body = Readiness),
        (status = 503, description = "A dependency failed; `dependencies` names it", body = Readiness),
    )
)]
pub async fn ready_alias(state: State<AppState>) -> Response {
    ready(state).await
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub name: &'static str,
    pub version: &'static str,
    pub git_sha: &'static str,
    pub environment: &'static str,
    pub region: Option<String>,
}

/// Build information
///
/// Name, version, git sha, environment and region.
#[utoipa::path(get, path = "/api/v1/info", tag = "health", operation_id = "getInfo", security(()),
    responses((status = 200, description = "What is running", body = Info)))]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    Json(Info {
        name: "automation-engine",
        version: env!("CARGO_PKG_VERSION"),
        // Set at build time by the Dockerfile or CI (`AUTOMATION_GIT_SHA=$(git rev-parse HEAD)`).
        git_sha: option_env!("AUTOMATION_GIT_SHA").unwrap_or("unknown"),
        environment: state.config.environment.as_str(),
        region: state.config.region.clone(),
    })
}

/// What `GET /` answers: what this is and where to go next.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Home {
    pub name: &'static str,
    pub version: &'static str,
    /// The interactive API documentation.
    pub docs: &'static str,
    pub openapi: &'static str,
    pub health: &'static str,
    pub readiness: &'static str,
}

/// What this is
///
/// Where the docs, the OpenAPI document and the probes are.
#[utoipa::path(get, path = "/", tag = "health", operation_id = "getHome", security(()),
    responses((status = 200, description = "Where to go next", body = Home)))]
pub async fn home() -> Json<Home> {
    Json(Home {
        name: "automation-engine",
        version: env!("CARGO_PKG_VERSION"),
        docs: "/docs",
        openapi: "/openapi.json",
        health: "/health",
        readiness: "/readiness",
    })
}

/// Metrics
///
/// Prometheus text format, for the scrape.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "getMetrics", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics() -> Response {
    let body = automation_shared::telemetry::metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
