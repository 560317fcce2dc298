//! The application: shared state, the router with its middleware, and `run`, which serves until
//! shutdown and then drains.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use automation_shared::config::{Config, JwtAlgorithm};
use automation_shared::db;
use automation_shared::db::audit::AuditChain;
use automation_shared::messaging::SystemUsers;
use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use sqlx::MySqlPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::access_log::AccessLog;
use crate::auth::jwt::JwtKeys;
use crate::auth::revocations::Revocations;
use crate::auth::sessions::Sessions;
use crate::broker::Broker;
use crate::problem::ApiError;
use crate::waiters::Waiters;
use crate::{auth, openapi, problem};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Arc<Config>,
    pub pool: MySqlPool,
    pub broker: Arc<Broker>,
    pub waiters: Arc<Waiters>,
    pub jwt: JwtKeys,
    /// A hash to verify against when the email is unknown, so that costs what a wrong password
    /// costs.
    pub dummy_hash: String,
    /// This process's audit chain, for the dead-letter actions it records.
    pub audit: tokio::sync::Mutex<AuditChain>,
    /// The AMQP user this process publishes as (`user_id`, which the broker vouches for).
    pub system_users: SystemUsers,
    /// Which users' tokens are no longer good (deactivated, deleted, another role).
    pub sessions: Arc<Sessions>,
    /// Which tokens were logged out.
    pub revocations: Arc<Revocations>,
    /// What is logged about the requests served.
    pub access_log: Arc<AccessLog>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state. MySQL is connected lazily and the broker in the background, so the API
    /// starts (and says it is not ready) while either is down.
    pub async fn build(config: Arc<Config>) -> anyhow::Result<AppState> {
        automation_shared::telemetry::metrics();
        automation_shared::meters::describe("automation-api", automation_shared::meters::API);
        if config.jwt.algorithm == JwtAlgorithm::HS256 && config.jwt.secret.is_none() {
            tracing::warn!("JWT_SECRET is not set: using the development secret (refused in production)");
        }
        let jwt = JwtKeys::from_config(&config.jwt)?;
        let config_audit_key = config.audit.key.clone();
        let pool = db::lazy_pool(&config.database)?;
        let dummy_hash = auth::password::hash(uuid::Uuid::new_v4().to_string()).await?;
        let sessions = Arc::new(Sessions::default());
        sessions.keep_fresh(pool.clone());
        let revocations = Arc::new(Revocations::default());
        revocations.keep_fresh(pool.clone());
        Ok(AppState(Arc::new(Inner {
            sessions,
            revocations,
            access_log: Arc::new(AccessLog::new(&config.api)),
            broker: Arc::new(Broker::new(config.clone())),
            system_users: SystemUsers::of(&config.amqp),
            config,
            pool,
            waiters: Arc::new(Waiters::default()),
            jwt,
            dummy_hash,
            audit: tokio::sync::Mutex::new(AuditChain::new(config_audit_key.as_deref())),
        })))
    }
}

/// The Content-Security-Policy of the docs UI. Swagger UI is vendored: its scripts, styles,
/// fonts and icons come from this origin (`self`), its SVG icons as `data:` images, and React sets
/// some inline styles. It fetches `/openapi.json` and, with "Try it out", the API itself. Nothing
/// may frame it (clickjacking a logged-in "Try it out").
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; font-src 'self'; connect-src 'self'; base-uri 'none'; \
                        form-action 'none'; frame-ancestors 'none'";

/// The router with every route, the OpenAPI document, the docs UI and the middleware.
pub fn router(state: AppState) -> Router {
    let (routes, api) = openapi::routes().split_for_parts();
    let api = openapi::finish(api);
    let docs: Router<AppState> = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", api).into();
    let docs = docs
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(DOCS_CSP)))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")));
    let config = &state.config;
    Router::new()
        .merge(routes)
        .merge(docs)
        // The Python service served ReDoc there; bookmarks and links to it reach the same
        // document in the vendored Swagger UI (ReDoc would need a script from a CDN).
        .route("/redoc", axum::routing::get(|| async { axum::response::Redirect::permanent("/docs/") }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state.clone())
        .layer(axum::extract::DefaultBodyLimit::max(config.api.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.api.request_timeout_secs),
        ))
        // Outside the timeout, so a 408 and a 413 are problems and readable cross-origin too.
        .layer(middleware::map_response(problem::framework_errors))
        .layer(cors(config))
        // Tokens and personal data must not stay in a browser's or a proxy's cache; nothing the
        // API answers is worth caching (the vendored docs are small and served locally).
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(middleware::from_fn(record_metrics))
        .layer(
            // Failures are not logged here: a 503 from readiness is no error, and real errors
            // are logged once where they are handled (`problem`).
            TraceLayer::new_for_http()
                .on_failure(())
                .make_span_with(crate::request_spans::make_span)
                .on_response(crate::access_log::OnResponse(state.access_log.clone())),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION, header::COOKIE]))
}

/// CORS from configuration. A wildcard never goes with credentials; listed origins do.
fn cors(config: &Config) -> CorsLayer {
    let exposed = [
        header::LOCATION,
        header::LINK,
        header::RETRY_AFTER,
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("preference-applied"),
    ];
    let allowed_headers = [
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        HeaderName::from_static("idempotency-key"),
        HeaderName::from_static("prefer"),
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("traceparent"),
        HeaderName::from_static("tracestate"),
    ];
    let methods = [Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE, Method::OPTIONS];
    let base = CorsLayer::new()
        .allow_methods(methods)
        .allow_headers(allowed_headers)
        .expose_headers(exposed)
        .max_age(Duration::from_secs(600));
    if config.api.cors_origins.iter().any(|o| o == "*") {
        base.allow_origin(AllowOrigin::any())
    } else {
        let origins: Vec<HeaderValue> =
            config.api.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        base.allow_origin(AllowOrigin::list(origins)).allow_credentials(true)
    }
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(automation_shared::meters::API_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!(automation_shared::meters::API_REQUEST_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// How long the stop waits for the MySQL pool to close.
const POOL_CLOSE_PATIENCE: Duration = Duration::from_secs(1);

/// Keeps the pool and broker gauges current until `stop`.
async fn report_connections(state: AppState, stop: CancellationToken) {
    loop {
        automation_shared::meters::report_connections(&state.pool, state.broker.is_ready());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(automation_shared::meters::CONNECTIONS_INTERVAL) => {}
        }
    }
}

/// Serves until `shutdown`, then stops accepting, lets in-flight requests finish within the
/// grace period, and closes the broker link.
pub async fn run(state: AppState, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let broker_stop = CancellationToken::new();
    let maintain = tokio::spawn(state.broker.clone().maintain(state.waiters.clone(), broker_stop.clone()));
    tokio::spawn(report_connections(state.clone(), broker_stop.clone()));
    let access_summary = tokio::spawn(state.access_log.clone().report(broker_stop.clone()));
    let grace = Duration::from_secs(state.config.api.shutdown_grace_secs);
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tracing::info!(address = %listener.local_addr()?, "API listening");
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let serving = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: finishing in-flight requests");
    match tokio::time::timeout(grace, serving).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "the server stopped with an error"),
        Ok(Err(error)) => tracing::error!(%error, "the server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    broker_stop.cancel();
    let _ = maintain.await;
    // The last interval's summary, with the requests drained above.
    let _ = access_summary.await;
    state.broker.close().await;
    // Closing waits for every connection to come back; one the session refresher is still
    // trying to open to a database that went away would hold the exit for its whole timeout.
    if tokio::time::timeout(POOL_CLOSE_PATIENCE, state.pool.close()).await.is_err() {
        tracing::warn!("MySQL connections were still in use or being opened; leaving them");
    }
    tracing::info!("API stopped");
    Ok(())
}
