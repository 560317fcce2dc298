//! Turning a validated request into an event: its id (deterministic with `Idempotency-Key`), the
//! CloudEvent with the caller as actor, the publish with a confirm and `mandatory`, and the wait
//! for the worker with `Prefer: wait=N`.

use std::time::Duration;

use automation_shared::access::Permission;
use automation_shared::config::AccessLog;
use automation_shared::db::events as event_rows;
use automation_shared::db::idempotency;
use automation_shared::events::{CloudEvent, EventData, EventRejected, EventState, EventType, extension};
use automation_shared::messaging::{self, Outgoing};
use automation_shared::traces::{self, TraceHeaders};
use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::problem::{ApiError, ApiResult};

/// The source of every event the API publishes.
pub const SOURCE: &str = "/automation-engine/api";
/// The longest `Prefer: wait` honoured.
pub const MAX_WAIT_SECS: u64 = 30;
/// Time kept between the end of a wait and the request timeout, for the read back and the answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(3);

/// The answer to an accepted write.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub event_id: String,
    /// Always `accepted`: the broker confirmed the event.
    pub status: &'static str,
    /// Where to follow the event.
    pub status_url: String,
}

/// The request headers every write reads, documented once.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// The same key from the same user on the same endpoint is the same event: a retried request
    /// is applied once. The same key with another body is refused (422).
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255, example = "order-4711-approve")]
    pub idempotency_key: Option<String>,
    /// `wait=N` (N ≤ 30): hold the answer until the worker applied the event (200 with the
    /// resource) or refused it (the problem), or 202 once N seconds pass.
    #[param(rename = "Prefer", example = "wait=10")]
    pub prefer: Option<String>,
    /// W3C trace context: the event and the worker's spans join this trace.
    #[param(example = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]
    pub traceparent: Option<String>,
    /// W3C trace context: vendor state carried with `traceparent`.
    #[param(example = "congo=t61rcWkgMzE")]
    pub tracestate: Option<String>,
}

/// What happened to a submitted event by the time the answer is due.
#[derive(Debug)]
pub enum Submitted {
    /// Published and confirmed; not (known to be) processed yet.
    Accepted { event_id: String },
    /// The worker applied it.
    Applied { event_id: String },
}

impl Submitted {
    /// The answer: 202 until the event is known to be applied, then 200 with the resource `read`
    /// finds. The broker confirmed the event by now, so a failed read answers 202 as well: an
    /// error here would tell the client that nothing was accepted, and invite a second write.
    pub async fn respond<T: Serialize>(
        self,
        location: &str,
        read: impl Future<Output = sqlx::Result<Option<T>>>,
    ) -> Response {
        match self {
            Submitted::Accepted { event_id } => accepted(&event_id),
            Submitted::Applied { event_id } => match read.await {
                Ok(Some(resource)) => applied(resource, location),
                Ok(None) => accepted(&event_id),
                Err(error) => {
                    tracing::warn!(%error, event.id = %event_id, "could not read back an applied change; answering 202");
                    accepted(&event_id)
                }
            },
        }
    }
}

/// `Prefer: wait=N`, capped at 30 seconds.
pub fn requested_wait(headers: &HeaderMap) -> Option<Duration> {
    headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).find_map(|preference| {
        let (name, value) = preference.trim().split_once('=')?;
        if name.trim().eq_ignore_ascii_case("wait") {
            value.trim().trim_matches('"').parse::<u64>().ok().map(|secs| Duration::from_secs(secs.min(MAX_WAIT_SECS)))
        } else {
            None
        }
    })
}

/// The event id: new, or with `Idempotency-Key` the one the key's first use got (per caller and
/// endpoint), so a retried request is the same event. Ids are random either way, so nobody can
/// publish under an id a request will use.
pub async fn event_id(state: &AppState, user: &AuthUser, endpoint: &str, headers: &HeaderMap) -> ApiResult<String> {
    let fresh = Uuid::now_v7().to_string();
    match headers.get("idempotency-key") {
        None => Ok(fresh),
        Some(key) => {
            let key = key
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| ApiError::field("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))?;
            let key_hash = hex_sha256(format!("{}\n{endpoint}\n{key}", user.id).as_bytes());
            Ok(idempotency::claim(&state.pool, &key_hash, &fresh).await?)
        }
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// With `Idempotency-Key`: the key stands for one request; the same key with another body is
/// a mistake, not a retry (the IETF Idempotency-Key draft's 422).
async fn check_fingerprint(state: &AppState, headers: &HeaderMap, event_id: &str, data: &Value) -> ApiResult<()> {
    if !headers.contains_key("idempotency-key") {
        return Ok(());
    }
    let ours = hex_sha256(&serde_json::to_vec(data).map_err(|e| ApiError::Internal(e.into()))?);
    match idempotency::fingerprint(&state.pool, event_id, &ours).await? {
        Some(stored) if stored != ours => Err(ApiError::field(
            "Idempotency-Key",
            "this key was used with another request body; use a new key for a new request",
        )),
        _ => Ok(()),
    }
}

/// Publishes one event as the caller and, with `Prefer: wait`, waits for the worker. Once the
/// broker confirmed, nothing but the worker's refusal is an error.
pub async fn submit(
    state: &AppState,
    user: &AuthUser,
    headers: &HeaderMap,
    event_id: String,
    data: EventData,
) -> ApiResult<Submitted> {
    let started = tokio::time::Instant::now();
    let event_type = data.event_type().as_str();
    let data = data.to_value();
    check_fingerprint(state, headers, &event_id, &data).await?;
    let Some(wait) = requested_wait(headers) else {
        publish(state, user, &event_id, event_type, data).await?;
        return Ok(Submitted::Accepted { event_id });
    };
    // Registered before the publish, so the quickest notification is not missed.
    let waiter = state.waiters.register(&event_id);
    send(state, user, &event_id, event_type, data, Reply::ToThisProcess).await?;
    // A request retried with its Idempotency-Key may find its event done long ago.
    if headers.contains_key("idempotency-key") {
        match settled(state, &event_id).await {
            Ok(Some(done)) => return done,
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, event.id = %event_id, "could not look the event up; waiting for it"),
        }
    }
    // The answer must beat the request timeout: a 408 after the confirm would read as a failure.
    let room = Duration::from_secs(state.config.api.request_timeout_secs)
        .saturating_sub(started.elapsed())
        .saturating_sub(ANSWER_MARGIN);
    let Some(notification) = waiter.wait(wait.min(room)).await else {
        // A retry on another replica while the first try was in flight: the notifications went
        // to the replica of the first try. One look before answering 202.
        if headers.contains_key("idempotency-key")
            && let Ok(Some(done)) = settled(state, &event_id).await
        {
            return done;
        }
        return Ok(Submitted::Accepted { event_id });
    };
    match notification.rejection() {
        None => Ok(Submitted::Applied { event_id }),
        Some(Ok(EventRejected { code, reason, .. })) => Err(ApiError::refused(Some(code), reason, event_id)),
        Some(Err(error)) => {
            tracing::warn!(%error, event.id = %event_id, "could not read the worker's refusal");
            Err(ApiError::refused(None, "the worker refused the event".into(), event_id))
        }
    }
}

/// The outcome if the worker already processed the event.
async fn settled(state: &AppState, event_id: &str) -> sqlx::Result<Option<ApiResult<Submitted>>> {
    let mut conn = state.pool.acquire().await?;
    let status = event_rows::status(&mut conn, event_id, Some(SOURCE)).await?;
    Ok(match status.status {
        EventState::Processed => Some(Ok(Submitted::Applied { event_id: event_id.to_string() })),
        EventState::Rejected => {
            Some(Err(ApiError::refused(status.reason_code, status.detail.unwrap_or_default(), event_id.to_string())))
        }
        EventState::Pending | EventState::Retrying | EventState::DeadLettered => None,
    })
}

/// Where the worker sends copies of an event's notifications besides the notifications exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Nowhere: nobody here waits for it.
    None,
    /// This process's reply queue: a request here waits (`Prefer: wait`).
    ToThisProcess,
}

/// Publishes with a confirm; anything short of a positive confirm is a 503.
pub async fn publish(
    state: &AppState,
    user: &AuthUser,
    event_id: &str,
    event_type: &str,
    data: Value,
) -> ApiResult<()> {
    send(state, user, event_id, event_type, data, Reply::None).await
}

async fn send(
    state: &AppState,
    user: &AuthUser,
    event_id: &str,
    event_type: &str,
    data: Value,
    reply: Reply,
) -> ApiResult<()> {
    let permission = EventType::parse(event_type).and_then(Permission::to_send).ok_or_else(|| {
        ApiError::field("type", format!("{event_type} is sent by automation-engine itself, never from outside"))
    })?;
    // One table for every door: what the dedicated route for this type asks, asked here too.
    user.require(permission)?;
    let exchange = state.broker.names().events();
    // The producer span (messaging semantic conventions); the message carries its context, in
    // the AMQP headers and as the CloudEvents extensions, so the worker's spans follow it.
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {exchange}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %exchange,
        messaging.rabbitmq.destination.routing_key = %event_type,
        messaging.message.id = %event_id,
        event.id = %event_id,
        event.r#type = %event_type,
    );
    let trace = TraceHeaders::of(&span);
    let mut event = CloudEvent::new(event_id, SOURCE, event_type, data)
        .with_extension(extension::ACTOR_ID, user.id.clone())
        .with_extension(extension::ACTOR_TYPE, user.actor_type())
        .with_optional_extension(extension::TRACEPARENT, trace.traceparent.clone());
    event = event.with_optional_extension(extension::TRACESTATE, trace.tracestate.clone());
    let body = serde_json::to_vec(&event).map_err(|e| ApiError::Internal(e.into()))?;
    // The publisher and the reply queue of one link: after a reconnect the queue has a new name.
    let (publisher, reply_queue) = state
        .broker
        .publisher_and_reply_queue()
        .ok_or_else(|| ApiError::BrokerUnavailable { reason: "not connected".into() })?;
    // As the system: the broker vouches for `user_id`, so the worker takes the actor (and the
    // reply destination) from it.
    let mut properties = trace
        .to_amqp(messaging::cloud_event_properties(event_id, event_type))
        .with_user_id(state.system_users.own().into());
    if reply == Reply::ToThisProcess {
        properties = properties.with_reply_to(reply_queue.as_ref().into());
    }
    let published = publisher
        .publish(Outgoing { exchange: &exchange, routing_key: event_type, body: &body, properties, mandatory: true })
        .instrument(span.clone())
        .await;
    if published.is_err() {
        span.record("otel.status_code", "error");
    }
    published.map_err(|e| ApiError::BrokerUnavailable { reason: e.to_string() })?;
    metrics::counter!(automation_shared::meters::API_EVENTS_PUBLISHED, "type" => event_type.to_string()).increment(1);
    // A line per event only when the access log has a line per request too; else at DEBUG.
    if state.access_log.mode() == AccessLog::All {
        tracing::info!(event.id = %event_id, event.r#type = %event_type, user.id = %user.id, trace_id = %traces::trace_id(&span), "event published");
    } else {
        tracing::debug!(event.id = %event_id, event.r#type = %event_type, user.id = %user.id, trace_id = %traces::trace_id(&span), "event published");
    }
    Ok(())
}

/// The status URL of an event.
pub fn status_url(event_id: &str) -> String {
    format!("/api/v1/events/{event_id}")
}

/// 202 with `{eventId, status, statusUrl}` and a `Location` header.
pub fn accepted(event_id: &str) -> Response {
    let body = Accepted { event_id: event_id.to_string(), status: "accepted", status_url: status_url(event_id) };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&status_url(event_id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// 200 with the resource after the worker applied the event.
pub fn applied<T: Serialize>(resource: T, location: &str) -> Response {
    let mut response = (StatusCode::OK, Json(resource)).into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::CONTENT_LOCATION, location);
    }
    response.headers_mut().insert("preference-applied", HeaderValue::from_static("wait"));
    response
}
