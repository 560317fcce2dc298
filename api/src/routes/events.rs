//! `POST /api/v1/events` for HTTP clients that cannot speak AMQP, and `GET /api/v1/events/{id}`:
//! where an event stands.

use automation_shared::db::events::{self as event_rows, EventStatus};
use automation_shared::events::{EventData, EventType, derived_id, envelope::MAX_EVENT_ID_CHARS};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::app::AppState;
use crate::auth::{AuthUser, Permission, Role};
use crate::commands::CommandHeaders;
use crate::commands::{self, Accepted};
use crate::extract::{JsonBytes, parse_json};
use crate::openapi::responses::{JsonBody, Secured};
use crate::problem::{ApiError, ApiResult, FieldError, Problem};

/// The most events one request may carry.
pub const MAX_BATCH: usize = 100;

/// A CloudEvents 1.0 event in structured JSON. The actor is always the caller: an `actorid` in
/// the event is replaced.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CloudEventInput {
    /// `1.0`
    pub specversion: String,
    /// Unique per source. The same caller sending the same source and id again is the same
    /// event, applied once; the acceptance's `eventId` is the id the system knows it by (derived
    /// from the caller, the source and this id).
    pub id: String,
    pub source: String,
    /// One of the v1 event types.
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: Option<String>,
    pub subject: Option<String>,
    pub datacontenttype: Option<String>,
    #[schema(value_type = Object)]
    pub data: Value,
}

/// One event, or an array of up to 100. (The handler reads the body item by item, so a problem
/// can name the field of the item at fault; this type documents the shape.)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EventsRequest {
    One(Box<CloudEventInput>),
    Many(Vec<CloudEventInput>),
}

/// A checked event: its id and source as sent, its type and data.
struct Checked {
    id: String,
    source: String,
    event_type: EventType,
    data: Value,
}

impl Checked {
    /// The id the system knows it by. CloudEvents ids are unique per source, and the API
    /// publishes everything under its own source: so the id is derived from the caller, the
    /// event's source and its id. The same event sent again is the same id (applied once);
    /// another caller's, or another source's, event with that id is another event, and nobody
    /// can take an id before its owner does.
    fn scoped_id(&self, caller: &str) -> String {
        derived_id(&format!("http-event:{caller}:{}", self.source), &self.id).to_string()
    }
}

fn check(prefix: &str, value: &Value) -> Result<Checked, Vec<FieldError>> {
    let at = |field: &str| {
        if prefix.is_empty() { field.to_string() } else { format!("{prefix}.{field}") }
    };
    // The required attributes by name, before the shape as a whole.
    if let Some(object) = value.as_object() {
        let mut missing: Vec<FieldError> = ["specversion", "id", "source", "type"]
            .into_iter()
            .filter(|attribute| !object.get(*attribute).is_some_and(Value::is_string))
            .map(|attribute| FieldError { field: at(attribute), message: "required, a string".into() })
            .collect();
        if !object.contains_key("data") {
            missing.push(FieldError { field: at("data"), message: "required: the event's data".into() });
        }
        if !missing.is_empty() {
            return Err(missing);
        }
    }
    let event: CloudEventInput = serde_json::from_value(value.clone())
        .map_err(|e| vec![FieldError { field: prefix.trim_end_matches('.').to_string(), message: e.to_string() }])?;
    let mut errors = Vec::new();
    if event.specversion != "1.0" {
        errors.push(FieldError { field: at("specversion"), message: "must be \"1.0\"".into() });
    }
    if event.id.is_empty() || event.id.chars().count() > MAX_EVENT_ID_CHARS || event.id.chars().any(char::is_control) {
        errors.push(FieldError {
            field: at("id"),
            message: format!("must be 1 to {MAX_EVENT_ID_CHARS} printable characters"),
        });
    }
    if event.source.is_empty() {
        errors.push(FieldError { field: at("source"), message: "must not be empty".into() });
    }
    let Some(event_type) = EventType::parse(&event.event_type) else {
        errors
            .push(FieldError { field: at("type"), message: format!("{:?} is not a v1 event type", event.event_type) });
        return Err(errors);
    };
    if !event_type.sent_from_outside() {
        errors.push(FieldError {
            field: at("type"),
            message: format!("{event_type} is sent by automation-engine itself, never from outside"),
        });
        return Err(errors);
    }
    if let Err(message) = EventData::decode(event_type, &event.data) {
        let (field, message) =
            message.split_once(": ").map_or((at("data"), message.clone()), |(f, m)| (at(f), m.to_string()));
        errors.push(FieldError { field, message });
    }
    if errors.is_empty() {
        Ok(Checked { id: event.id, source: event.source, event_type, data: event.data })
    } else {
        Err(errors)
    }
}

/// The attributes of a binary-mode event (CloudEvents HTTP binding, 3.1.3): sent as headers,
/// with the event's data as the body. Extensions (`ce-<name>`) are accepted and not used.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(dead_code, reason = "documents headers the handler reads from the HeaderMap")]
pub struct BinaryModeHeaders {
    /// `1.0`; its presence selects binary mode.
    #[param(rename = "ce-specversion")]
    specversion: Option<String>,
    /// The event's id.
    #[param(rename = "ce-id")]
    id: Option<String>,
    /// The event's source, e.g. `%2Fspring%2Forders` or `/spring/orders`.
    #[param(rename = "ce-source")]
    source: Option<String>,
    /// One of the v1 event types.
    #[param(rename = "ce-type")]
    r#type: Option<String>,
    /// RFC 3339.
    #[param(rename = "ce-time")]
    time: Option<String>,
    #[param(rename = "ce-subject")]
    subject: Option<String>,
}

/// The prefix of a CloudEvents attribute sent as an HTTP header (binary content mode).
const BINARY_PREFIX: &str = "ce-";

/// How a request carries its CloudEvents (the HTTP protocol binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `ce-*` headers hold the attributes, the body is the data (what Knative, Spring Cloud
    /// Function and most HTTP CloudEvents clients send by default).
    Binary,
    /// `application/cloudevents+json`: one event, attributes and data in the body.
    Structured,
    /// `application/cloudevents-batch+json`: an array of structured events.
    Batch,
    /// `application/json`: one structured event or an array of them.
    Json,
}

impl Mode {
    /// The content type decides first, as the binding says: a structured or batched event is
    /// that even with stray `ce-` headers; otherwise `ce-specversion` means binary.
    fn of(headers: &HeaderMap) -> Mode {
        let essence = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "application/cloudevents+json" => Mode::Structured,
            "application/cloudevents-batch+json" => Mode::Batch,
            _ if headers.contains_key("ce-specversion") => Mode::Binary,
            _ => Mode::Json,
        }
    }
}

/// One event in binary content mode: its attributes from the `ce-*` headers (percent-decoded,
/// as the binding says), `datacontenttype` from `Content-Type`, the body as its data.
fn binary_event(headers: &HeaderMap, data: Value) -> Result<Value, ApiError> {
    let mut event = serde_json::Map::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix(BINARY_PREFIX) else { continue };
        let field = || format!("{BINARY_PREFIX}{attribute}");
        let text = value
            .to_str()
            .map_err(|_| ApiError::field(field(), "must be printable ASCII, percent-encoded where needed"))?;
        let decoded = percent_decode(text).ok_or_else(|| {
            ApiError::field(field(), "is not valid percent-encoding of UTF-8 text (CloudEvents HTTP binding, 3.1.3.2)")
        })?;
        if event.insert(attribute.to_string(), Value::String(decoded)).is_some() {
            return Err(ApiError::field(field(), "was sent twice"));
        }
    }
    if let Some(content_type) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        event.insert("datacontenttype".into(), Value::String(content_type.to_string()));
    }
    event.insert("data".into(), data);
    Ok(Value::Object(event))
}

/// `%XX` sequences decoded; anything else kept as it is. `None` for a broken sequence or text
/// that is not UTF-8 once decoded.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What `POST /api/v1/events` answers: one acceptance for one event, an array for an array.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AcceptedEvents {
    One(Accepted),
    Many(Vec<Accepted>),
}

/// Publish CloudEvents
///
/// For HTTP clients that cannot speak AMQP, in each content mode of the CloudEvents HTTP
/// binding: **structured** (`application/cloudevents+json`, one event), **batched**
/// (`application/cloudevents-batch+json`, an array of up to 100), **binary** (the attributes as
/// `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, ... headers, percent-encoded, and the event's
/// data as an `application/json` body), or plain `application/json` with one event or an array.
/// A batch is checked whole before any of it is published. The caller is the actor.
#[utoipa::path(
    post, path = "/api/v1/events", tag = "events", operation_id = "publishEvents",
    security(("bearer" = [])),
    request_body(description = "One CloudEvent, an array of up to 100, or (binary mode) the data of one whose attributes are `ce-*` headers", content(
        (EventsRequest = "application/json", example = json!({
            "specversion": "1.0", "id": "orders-4711-approval", "source": "/spring/orders", "type": "approval.requested",
            "time": "2026-03-01T09:30:00Z", "datacontenttype": "application/json",
            "data": {"workflowId": "0190f7a2-5c1e-7c3a-9a41-3f8e2b6d1c20", "title": "Order 4711", "amount": 250.0,
                     "currency": "EUR", "requesterId": "0190f7a2-7d00-7000-8000-000000000001"}
        })),
        (CloudEventInput = "application/cloudevents+json"),
        (Vec<CloudEventInput> = "application/cloudevents-batch+json"),
    )),
    params(CommandHeaders, BinaryModeHeaders),
    responses(
        (status = 202, description = "Every event was confirmed by the broker (an array answers an array); one event's status URL is also sent as `Location`",
            body = AcceptedEvents, headers(("Location" = String, description = "For one event: its status URL"))),
        Secured, JsonBody,
        (status = 503, description = "The broker did not confirm; for an array, the events before the failing one were accepted",
            body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn publish(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Response> {
    user.require(Permission::PublishEvents)?;
    let value: Value = parse_json(&body)?;
    let mode = Mode::of(&headers);
    let (items, many) = match (mode, value) {
        (Mode::Binary, data) => (vec![binary_event(&headers, data)?], false),
        (Mode::Batch | Mode::Json, Value::Array(items)) => (items, true),
        (Mode::Structured | Mode::Json, one @ Value::Object(_)) => (vec![one], false),
        (Mode::Batch, _) => {
            return Err(ApiError::field("", "application/cloudevents-batch+json is a JSON array of CloudEvents"));
        }
        (Mode::Structured, _) => {
            return Err(ApiError::field("", "application/cloudevents+json is one CloudEvent, a JSON object"));
        }
        (Mode::Json, _) => return Err(ApiError::field("", "send a CloudEvent object or an array of them")),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::field("", format!("send 1 to {MAX_BATCH} events")));
    }
    // Check everything first: a malformed batch publishes nothing.
    let mut checked = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match check(&if many { format!("[{i}]") } else { String::new() }, item) {
            Ok(event) => checked.push(event),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if mode == Mode::Binary {
        // In binary mode the attributes came as headers: name those.
        for error in &mut errors {
            if !error.field.starts_with("data") && !error.field.is_empty() {
                error.field = format!("{BINARY_PREFIX}{}", error.field);
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // What the dedicated route of each type asks (PATCH /approvals/{id} for approval.decided, ...),
    // for the whole batch before anything is published.
    for (i, Checked { event_type, .. }) in checked.iter().enumerate() {
        if let Some(permission) = Permission::to_send(*event_type)
            && !permission.allows(user.role)
        {
            let item = if many { format!(" (item {i})") } else { String::new() };
            return Err(ApiError::Forbidden(format!("the {} role may not send {event_type}{item}", user.role)));
        }
    }
    let mut accepted = Vec::with_capacity(checked.len());
    for event in checked {
        let id = event.scoped_id(&user.id);
        commands::publish(&state, &user, &id, event.event_type.as_str(), event.data).await?;
        accepted.push(Accepted { status_url: commands::status_url(&id), event_id: id, status: "accepted" });
    }
    if many {
        Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
    } else {
        Ok(commands::accepted(&accepted[0].event_id))
    }
}

/// Get an event's status
///
/// Where an event stands: `pending`, `processed`, `rejected`, `retrying` or `dead_lettered`,
/// with the rules that ran on it. Only its actor and admins see it.
#[utoipa::path(
    get, path = "/api/v1/events/{id}", tag = "events", operation_id = "getEventStatus",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The event id")),
    responses(
        (status = 200, description = "Where the event stands", body = EventStatus),
        Secured,
        (status = 404, description = "No such event, or another user's", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<EventStatus>> {
    let mut conn = state.pool.acquire().await?;
    let mut status = event_rows::status(&mut conn, &id, None).await?;
    // Only the event's actor and admins see it; to anyone else it does not exist.
    if user.role != Role::Admin {
        match &status.actor_id {
            Some(actor) if *actor != user.id => return Err(ApiError::NotFound(format!("no event {id} of yours"))),
            Some(_) => {}
            // Not applied yet, so whose it is is not known: only where it stands, no details.
            None => status = status.bare(),
        }
    }
    Ok(Json(status))
}
