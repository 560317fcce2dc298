//! Reading an AMQP message into an [`Envelope`]: the three shapes Spring Boot sends (CloudEvents
//! structured, CloudEvents binary, plain Jackson JSON), and every reason a message cannot be taken.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{CloudEvent, EventData, EventType, ID_NAMESPACE, extension};
use crate::db::audit::ActorType;
use crate::messaging::{Origin, SystemUsers};
use crate::rules::pattern_matches;

/// Longest accepted event id.
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// Longest accepted `source` (what `inbox.source` holds: the inbox knows an event by both).
pub const MAX_SOURCE_CHARS: usize = 255;
/// Every source the system publishes under starts so (`/automation-engine/api`, `.../rules`).
pub const SYSTEM_SOURCE: &str = "/automation-engine";
/// The deepest chain of rule-caused events (CONTRACT §6).
pub const MAX_CHAIN_DEPTH: u32 = 8;

/// How the message arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `application/cloudevents+json`: attributes and `data` in the body.
    Structured,
    /// Attributes in `ce_`/`ce-`/`cloudEvents:`/`cloudEvents_` headers, `data` as the body.
    Binary,
    /// `RabbitTemplate` with Jackson: the body is `data`, the type is the `type` property or the
    /// routing key.
    Plain,
}

impl Shape {
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Structured => "structured",
            Shape::Binary => "binary",
            Shape::Plain => "plain",
        }
    }
}

/// Why a message cannot be taken. Such a message is dead-lettered at once, never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonCode {
    TooLarge,
    JavaSerialized,
    NotUtf8,
    InvalidJson,
    InvalidCloudEvent,
    UnknownType,
    SchemaInvalid,
    PublisherNotAllowed,
    /// An outside publisher's message whose type is not its routing key: the broker's topic
    /// permissions, which hold a publisher to its types, check the routing key.
    RoutingKeyMismatch,
}

impl PoisonCode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoisonCode::TooLarge => "too_large",
            PoisonCode::JavaSerialized => "java_serialized",
            PoisonCode::NotUtf8 => "not_utf8",
            PoisonCode::InvalidJson => "invalid_json",
            PoisonCode::InvalidCloudEvent => "invalid_cloudevent",
            PoisonCode::UnknownType => "unknown_type",
            PoisonCode::SchemaInvalid => "schema_invalid",
            PoisonCode::PublisherNotAllowed => "publisher_not_allowed",
            PoisonCode::RoutingKeyMismatch => "routing_key_mismatch",
        }
    }
}

/// A message that cannot be taken, with the precise reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub code: PoisonCode,
    pub detail: String,
    /// What could be read before the problem was found.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
}

impl fmt::Display for Poison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl Poison {
    fn new(code: PoisonCode, detail: impl Into<String>) -> Self {
        Poison { code, detail: detail.into(), event_id: None, event_type: None }
    }

    fn about(mut self, id: Option<&str>, event_type: Option<&str>) -> Self {
        self.event_id = id.map(str::to_string);
        self.event_type = event_type.map(str::to_string);
        self
    }
}

/// What an inbound message is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'a> {
    pub max_bytes: usize,
    /// AMQP user → event-type patterns it may publish.
    pub publishers: &'a BTreeMap<String, Vec<String>>,
    /// Whose messages are the system's own (see [`Origin`]).
    pub system: &'a SystemUsers,
}

/// An inbound event, whatever shape it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub id: String,
    pub event_type: EventType,
    pub source: String,
    pub time: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    pub actor_id: Option<String>,
    /// Established from who published it: what the system says for its own messages, always
    /// `service` for an outside publisher's.
    pub actor_type: ActorType,
    /// Who published it, as the broker vouches.
    pub origin: Origin,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    /// How many rule-caused events led to this one (0 for an event from outside).
    pub chain_depth: u32,
    /// W3C trace context: the AMQP headers `traceparent`/`tracestate` (the publish), else the
    /// CloudEvents extensions of the same names.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// Where copies of this event's notifications go besides the notifications exchange: the
    /// AMQP `reply_to` of a message of the system's own (the API sets it when a request waits),
    /// if it names an API reply queue; never an outside publisher's.
    pub reply_to: Option<String>,
    pub data: EventData,
    /// `data` as received (unknown fields included): what rules see as `event.data`.
    pub raw_data: Value,
    pub shape: Shape,
}

/// The optional attributes the event schemas type as `string` or `null`.
const OPTIONAL_STRING_ATTRIBUTES: [&str; 9] = [
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "actorid",
    "correlationid",
    "causationid",
    "traceparent",
    "tracestate",
];
const CE_PREFIXES: [&str; 4] = ["ce_", "ce-", "cloudevents:", "cloudevents_"];
const CE_STANDARD: [&str; 10] =
    ["specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"];

impl Envelope {
    /// The event's identity in this system, from which the ids of what it causes are derived.
    /// CloudEvents make `source` + `id` unique, so two publishers may use the same id under their
    /// own sources: the system's own events (ids that are random UUIDs) are known by their id,
    /// every other event by its source and id.
    pub fn scoped_id(&self) -> std::borrow::Cow<'_, str> {
        if self.source.starts_with(SYSTEM_SOURCE) {
            std::borrow::Cow::Borrowed(&self.id)
        } else {
            std::borrow::Cow::Owned(format!("{}\n{}", self.source, self.id))
        }
    }

    /// The event as the inbox knows it: (`id`, `source`).
    pub fn event_ref(&self) -> (&str, &str) {
        (&self.id, &self.source)
    }

    /// Reads one AMQP message.
    pub fn parse(
        routing_key: &str,
        properties: &BasicProperties,
        body: &[u8],
        limits: Limits<'_>,
    ) -> Result<Envelope, Poison> {
        if body.len() > limits.max_bytes {
            return Err(Poison::new(
                PoisonCode::TooLarge,
                format!("the body is {} bytes; the limit is {}", body.len(), limits.max_bytes),
            ));
        }
        let content_type = properties.content_type().as_ref().map(|c| c.as_str().to_ascii_lowercase());
        if content_type.as_deref().is_some_and(|c| c.contains("java-serialized")) || body.starts_with(&[0xAC, 0xED]) {
            return Err(Poison::new(
                PoisonCode::JavaSerialized,
                "a Java-serialized object; configure the publisher with Jackson2JsonMessageConverter",
            ));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            Poison::new(
                PoisonCode::NotUtf8,
                format!("the body is not UTF-8 (invalid byte at offset {})", e.valid_up_to()),
            )
        })?;
        let headers = ce_headers(properties.headers().as_ref());
        let json: Value = serde_json::from_str(text)
            .map_err(|e| Poison::new(PoisonCode::InvalidJson, format!("the body is not JSON: {e}")))?;

        let structured = content_type.as_deref().is_some_and(|c| c.starts_with("application/cloudevents+json"))
            || (headers.is_empty() && looks_like_cloud_event(&json));
        let shape = if structured {
            Shape::Structured
        } else if headers.contains_key("specversion") {
            Shape::Binary
        } else {
            Shape::Plain
        };

        let mut raw = match shape {
            Shape::Structured => structured_attributes(json)?,
            Shape::Binary => binary_attributes(&headers, json),
            Shape::Plain => plain_attributes(routing_key, properties, text, json),
        };

        let id = raw.id.clone();
        let type_name = raw.event_type.clone();
        let about = |p: Poison| p.about(Some(&id), Some(&type_name));
        if id.is_empty() || id.chars().count() > MAX_EVENT_ID_CHARS || id.chars().any(char::is_control) {
            return Err(about(Poison::new(
                PoisonCode::InvalidCloudEvent,
                format!("id: must be 1 to {MAX_EVENT_ID_CHARS} printable characters"),
            )));
        }
        if raw.source.chars().count() > MAX_SOURCE_CHARS || raw.source.chars().any(char::is_control) {
            return Err(about(Poison::new(
                PoisonCode::InvalidCloudEvent,
                format!("source: must be at most {MAX_SOURCE_CHARS} printable characters"),
            )));
        }
        let Some(event_type) = EventType::parse(&type_name) else {
            return Err(about(Poison::new(
                PoisonCode::UnknownType,
                format!(
                    "type {type_name:?} is not a v1 event type ({})",
                    EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )));
        };
        let origin = Origin::of(properties, limits.system);
        if let Origin::External { user } = &origin {
            if !event_type.sent_from_outside() {
                return Err(about(Poison::new(
                    PoisonCode::PublisherNotAllowed,
                    format!("{type_name} is sent by automation-engine itself; no publisher may send it"),
                )));
            }
            // The system's sources are its own: an outsider cannot occupy their event ids.
            if raw.source.starts_with(SYSTEM_SOURCE) {
                return Err(about(Poison::new(
                    PoisonCode::PublisherNotAllowed,
                    format!("source {:?} is automation-engine's own; publish under a source of yours", raw.source),
                )));
            }
            if type_name != routing_key {
                return Err(about(Poison::new(
                    PoisonCode::RoutingKeyMismatch,
                    format!(
                        "type {type_name} arrived with routing key {routing_key:?}; publish each event with its type as the routing key"
                    ),
                )));
            }
            if let Some(user) = user
                && let Some(allowed) = limits.publishers.get(user)
                && !allowed.iter().any(|p| pattern_matches(p, &type_name))
            {
                return Err(about(Poison::new(
                    PoisonCode::PublisherNotAllowed,
                    format!("AMQP user {user:?} may not publish {type_name} (allowed: {})", allowed.join(", ")),
                )));
            }
        }
        let time = match raw.time.take() {
            None => None,
            Some(t) => Some(DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                about(Poison::new(PoisonCode::InvalidCloudEvent, format!("time: {t:?} is not an RFC 3339 timestamp")))
            })?),
        };
        let chain_depth = match raw.extension(extension::CHAIN_DEPTH) {
            None => 0,
            Some(v) => v.parse::<u32>().map_err(|_| {
                about(Poison::new(PoisonCode::InvalidCloudEvent, format!("chaindepth: {v:?} is not a whole number")))
            })?,
        };
        let data =
            EventData::decode(event_type, &raw.data).map_err(|e| about(Poison::new(PoisonCode::SchemaInvalid, e)))?;
        let actor_id = raw
            .extension(extension::ACTOR_ID)
            .or_else(|| raw.data.get("actorId").and_then(Value::as_str).map(str::to_string));
        // Only the system's own word about who acted counts; an outsider is a service, whatever
        // it says it is.
        let actor_type = match origin {
            Origin::System => raw.extension(extension::ACTOR_TYPE).map_or(ActorType::Service, |t| ActorType::parse(&t)),
            Origin::External { .. } => ActorType::Service,
        };
        let correlation_id = raw.extension(extension::CORRELATION_ID).unwrap_or_else(|| id.clone());
        let reply_to = match origin {
            Origin::System => properties
                .reply_to()
                .as_ref()
                .map(|r| r.as_str())
                .filter(|r| crate::messaging::looks_like_reply_queue(r))
                .map(str::to_string),
            Origin::External { .. } => None,
        };
        Ok(Envelope {
            reply_to,
            causation_id: raw.extension(extension::CAUSATION_ID),
            // The header is the latest hop (the producer span); the extension may name the span
            // that built the body, earlier.
            traceparent: header_string(properties, extension::TRACEPARENT)
                .or_else(|| raw.extension(extension::TRACEPARENT)),
            tracestate: header_string(properties, extension::TRACESTATE)
                .or_else(|| raw.extension(extension::TRACESTATE)),
            id,
            event_type,
            source: raw.source,
            time,
            subject: raw.subject,
            actor_id,
            actor_type,
            origin,
            correlation_id,
            chain_depth,
            data,
            raw_data: raw.data,
            shape,
        })
    }

    /// The event as a structured CloudEvent: what rules see as `event`, and what the API and
    /// rule actions publish.
    pub fn to_cloud_event(&self) -> CloudEvent {
        CloudEvent {
            specversion: "1.0".into(),
            id: self.id.clone(),
            source: self.source.clone(),
            event_type: self.event_type.as_str().into(),
            time: self.time,
            subject: self.subject.clone(),
            datacontenttype: Some("application/json".into()),
            data: self.raw_data.clone(),
            extensions: Map::new(),
        }
        .with_optional_extension(extension::ACTOR_ID, self.actor_id.clone())
        .with_extension(extension::ACTOR_TYPE, self.actor_type.as_str())
        .with_extension(extension::CORRELATION_ID, self.correlation_id.clone())
        .with_optional_extension(extension::CAUSATION_ID, self.causation_id.clone())
        .with_extension(extension::CHAIN_DEPTH, self.chain_depth)
        .with_optional_extension(extension::TRACEPARENT, self.traceparent.clone())
        .with_optional_extension(extension::TRACESTATE, self.tracestate.clone())
    }
}

/// The attributes found, before they are checked.
struct RawAttributes {
    id: String,
    source: String,
    event_type: String,
    time: Option<String>,
    subject: Option<String>,
    extensions: BTreeMap<String, String>,
    data: Value,
}

impl RawAttributes {
    /// Extension names are matched without regard to case: the spec says lowercase, Java
    /// publishers often send `actorId`.
    fn extension(&self, name: &str) -> Option<String> {
        self.extensions.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
}

fn looks_like_cloud_event(json: &Value) -> bool {
    json.get("specversion").is_some() && json.get("type").is_some() && json.get("id").is_some()
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn structured_attributes(json: Value) -> Result<RawAttributes, Poison> {
    let Value::Object(mut object) = json else {
        return Err(Poison::new(PoisonCode::InvalidCloudEvent, "a structured CloudEvent must be a JSON object"));
    };
    let id = object.get("id").and_then(scalar_string);
    let event_type = object.get("type").and_then(Value::as_str).map(str::to_string);
    let fail =
        |detail: String| Poison::new(PoisonCode::InvalidCloudEvent, detail).about(id.as_deref(), event_type.as_deref());
    match object.get("specversion").and_then(Value::as_str) {
        Some("1.0") => {}
        Some(other) => {
            return Err(fail(format!("specversion: {other:?} is not supported; send \"1.0\"")));
        }
        None => return Err(fail("specversion: missing; send \"1.0\"".into())),
    }
    for attribute in ["id", "source", "type"] {
        match object.get(attribute) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(fail(format!("{attribute}: a required attribute is missing or not a string")));
            }
        }
    }
    // As the schemas say: an optional attribute is a string, or absent, or null (as Jackson
    // writes an unset field); anything else is a mistake the publisher should hear of.
    for attribute in OPTIONAL_STRING_ATTRIBUTES {
        match object.get(attribute) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(other) => return Err(fail(format!("{attribute}: must be a string or null, not {other}"))),
        }
    }
    if object.contains_key("data_base64") {
        return Err(fail("data_base64: binary data is not accepted; send JSON in `data`".into()));
    }
    if let Some(ct) = object.get("datacontenttype").and_then(Value::as_str)
        && !ct.to_ascii_lowercase().contains("json")
    {
        return Err(fail(format!("datacontenttype: {ct:?} is not JSON")));
    }
    let data = object.remove("data").unwrap_or(Value::Null);
    let text = |object: &Map<String, Value>, key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
    let extensions = object
        .iter()
        .filter(|(k, _)| !CE_STANDARD.contains(&k.as_str()))
        .filter_map(|(k, v)| scalar_string(v).map(|v| (k.clone(), v)))
        .collect();
    Ok(RawAttributes {
        id: text(&object, "id").unwrap_or_default(),
        source: text(&object, "source").unwrap_or_default(),
        event_type: text(&object, "type").unwrap_or_default(),
        time: text(&object, "time"),
        subject: text(&object, "subject"),
        extensions,
        data,
    })
}

fn binary_attributes(headers: &BTreeMap<String, String>, data: Value) -> RawAttributes {
    let get = |name: &str| headers.get(name).cloned();
    RawAttributes {
        id: get("id").unwrap_or_default(),
        source: get("source").unwrap_or_else(|| "unknown".into()),
        event_type: get("type").unwrap_or_default(),
        time: get("time"),
        subject: get("subject"),
        extensions: headers
            .iter()
            .filter(|(k, _)| !CE_STANDARD.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        data,
    }
}

fn plain_attributes(routing_key: &str, properties: &BasicProperties, body: &str, data: Value) -> RawAttributes {
    let event_type = properties
        .kind()
        .as_ref()
        .map(|k| k.as_str().to_string())
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| routing_key.to_string());
    // Spring sets no message id by default: the same body on the same key is the same event, so a
    // redelivery or a republish is recognised.
    let id = properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| Uuid::new_v5(&ID_NAMESPACE, format!("{routing_key}\n{body}").as_bytes()).to_string());
    let publisher = properties
        .user_id()
        .as_ref()
        .or(properties.app_id().as_ref())
        .map_or_else(|| "unknown".to_string(), |p| p.as_str().to_string());
    let mut extensions = BTreeMap::new();
    if let Some(correlation) = properties.correlation_id() {
        extensions.insert(extension::CORRELATION_ID.to_string(), correlation.as_str().to_string());
    }
    let source = format!("amqp://{}", publisher.chars().take(MAX_SOURCE_CHARS - "amqp://".len()).collect::<String>());
    RawAttributes { id, source, event_type, time: None, subject: None, extensions, data }
}

/// CloudEvents attributes carried in headers, under any of the four prefixes, keyed by the
/// lowercase attribute name.
fn ce_headers(headers: Option<&FieldTable>) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let Some(headers) = headers else { return found };
    for (key, value) in headers.inner() {
        let lower = key.as_str().to_ascii_lowercase();
        let Some(name) = CE_PREFIXES.iter().find_map(|p| lower.strip_prefix(p)) else { continue };
        let text = if name == "time" { amqp_time(value) } else { amqp_string(value) };
        if let Some(text) = text {
            found.insert(name.to_string(), text);
        }
    }
    found
}

fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    properties
        .headers()
        .as_ref()?
        .inner()
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .and_then(|(_, v)| amqp_string(v))
}

/// The `time` attribute in a header: text as it is, or a native timestamp as the AMQP binding
/// allows, in RFC 3339. A 64-bit integer is milliseconds since the epoch (the AMQP 1.0 timestamp
/// the binding names, as the CloudEvents SDKs write it); an AMQP 0-9-1 timestamp, and a 32-bit
/// integer (too small for today in milliseconds), are seconds.
fn amqp_time(value: &AMQPValue) -> Option<String> {
    let millis = match value {
        AMQPValue::Timestamp(seconds) => i64::try_from(*seconds).ok()?.checked_mul(1_000)?,
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(seconds) => i64::from(*seconds).checked_mul(1_000)?,
        AMQPValue::LongUInt(seconds) => i64::from(*seconds).checked_mul(1_000)?,
        _ => return amqp_string(value),
    };
    match DateTime::<Utc>::from_timestamp_millis(millis) {
        Some(time) => Some(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        // Out of range: the number as it came, which the check of `time` then refuses by name.
        None => amqp_string(value),
    }
}

/// A header value as text, for the scalar types publishers use.
pub fn amqp_string(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(t) => DateTime::<Utc>::from_timestamp(*t as i64, 0)?.to_rfc3339(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{LongString, ShortString};
    use serde_json::json;

    fn system() -> &'static SystemUsers {
        static SYSTEM: std::sync::OnceLock<SystemUsers> = std::sync::OnceLock::new();
        SYSTEM.get_or_init(|| SystemUsers::new("automation", &[]))
    }

    fn limits() -> Limits<'static> {
        static NONE: BTreeMap<String, Vec<String>> = BTreeMap::new();
        Limits { max_bytes: 256 * 1024, publishers: &NONE, system: system() }
    }

    fn workflow_data() -> Value {
        json!({"name": "Purchases"})
    }

    fn structured_props() -> BasicProperties {
        BasicProperties::default().with_content_type(ShortString::from("application/cloudevents+json"))
    }

    fn headers(pairs: &[(&str, &str)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (k, v) in pairs {
            table.insert(ShortString::from(*k), AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())));
        }
        table
    }

    #[test]
    fn structured_cloud_events_are_read_with_their_extensions() {
        let body = json!({
            "specversion": "1.0", "id": "e-1", "source": "/spring/orders", "type": "workflow.created",
            "time": "2026-01-02T03:04:05Z", "actorId": "svc-orders", "correlationid": "c-9",
            "data": workflow_data()
        });
        let e = Envelope::parse("workflow.created", &structured_props(), body.to_string().as_bytes(), limits())
            .expect("valid");
        assert_eq!(e.shape, Shape::Structured);
        assert_eq!(e.id, "e-1");
        assert_eq!(e.event_type, EventType::WorkflowCreated);
        assert_eq!(e.actor_id.as_deref(), Some("svc-orders"));
        assert_eq!(e.correlation_id, "c-9");
        assert_eq!(e.source, "/spring/orders");
        assert!(e.time.is_some());
    }

    #[test]
    fn reply_to_is_kept_only_from_the_system_and_only_when_it_names_an_api_reply_queue() {
        let body = json!({
            "specversion": "1.0", "id": "r-1", "source": "/automation-engine/api", "type": "workflow.created",
            "data": workflow_data()
        })
        .to_string();
        let queue = "automation.api.0123456789abcdef0123456789abcdef";
        let read = |properties: BasicProperties| {
            Envelope::parse("workflow.created", &properties, body.as_bytes(), limits()).map(|e| e.reply_to)
        };
        let system = structured_props().with_user_id(ShortString::from("automation"));
        assert_eq!(read(system.clone().with_reply_to(ShortString::from(queue))), Ok(Some(queue.to_string())));
        assert_eq!(read(system.clone()), Ok(None));
        for other in ["automation.commands", "automation.api.nothex", "amq.rabbitmq.reply-to"] {
            assert_eq!(read(system.clone().with_reply_to(ShortString::from(other))), Ok(None), "{other}");
        }
        let outsider = json!({
            "specversion": "1.0", "id": "r-2", "source": "/spring/orders", "type": "workflow.created",
            "data": workflow_data()
        })
        .to_string();
        let from_outside = Envelope::parse(
            "workflow.created",
            &structured_props().with_reply_to(ShortString::from(queue)),
            outsider.as_bytes(),
            limits(),
        )
        .expect("valid");
        assert_eq!(from_outside.reply_to, None, "an outside publisher gets no copies");
    }

    /// What Jackson writes for a class generated from the schemas, with nothing optional set.
    #[test]
    fn optional_attributes_and_fields_sent_as_null_are_taken_as_absent() {
        let body = json!({
            "specversion": "1.0", "id": "j-1", "source": "/spring/orders", "type": "approval.requested",
            "time": null, "subject": null, "datacontenttype": null, "dataschema": null,
            "actorid": null, "correlationid": null, "causationid": null, "traceparent": null,
            "data": {"approvalId": null, "workflowId": Uuid::nil(), "title": "t", "amount": null, "currency": null,
                     "requesterId": Uuid::nil(), "details": null}
        });
        let e = Envelope::parse("approval.requested", &structured_props(), body.to_string().as_bytes(), limits())
            .expect("nulls are absent attributes");
        assert_eq!((e.time, e.subject, e.actor_id), (None, None, None));
        assert_eq!(e.correlation_id, "j-1", "no correlation id: the event's own");
        let EventData::ApprovalRequested(data) = e.data else { panic!("{:?}", e.data) };
        assert_eq!((data.approval_id, data.amount, data.details), (None, None, None));
    }

    #[test]
    fn an_optional_attribute_that_is_neither_a_string_nor_null_is_refused_as_the_schema_refuses_it() {
        for (attribute, value) in [("time", json!(1796164737406_u64)), ("subject", json!(7)), ("actorid", json!({}))] {
            let mut body = json!({
                "specversion": "1.0", "id": "j-2", "source": "/spring", "type": "workflow.created", "data": workflow_data()
            });
            body[attribute] = value;
            let poison =
                Envelope::parse("workflow.created", &structured_props(), body.to_string().as_bytes(), limits())
                    .expect_err("refused");
            assert_eq!(poison.code, PoisonCode::InvalidCloudEvent, "{poison}");
            assert!(poison.detail.starts_with(&format!("{attribute}: must be a string or null")), "{poison}");
        }
    }

    #[test]
    fn binary_cloud_events_are_read_under_every_header_prefix() {
        for prefix in ["ce_", "ce-", "cloudEvents:", "cloudEvents_"] {
            let h = headers(&[
                (&format!("{prefix}specversion"), "1.0"),
                (&format!("{prefix}id"), "b-1"),
                (&format!("{prefix}source"), "/spring"),
                (&format!("{prefix}type"), "workflow.created"),
                (&format!("{prefix}actorid"), "svc"),
            ]);
            let props =
                BasicProperties::default().with_content_type(ShortString::from("application/json")).with_headers(h);
            let e = Envelope::parse("workflow.created", &props, workflow_data().to_string().as_bytes(), limits())
                .unwrap_or_else(|p| panic!("{prefix}: {p}"));
            assert_eq!(e.shape, Shape::Binary, "{prefix}");
            assert_eq!(e.id, "b-1");
            assert_eq!(e.actor_id.as_deref(), Some("svc"));
        }
    }

    /// The AMQP binding lets `time` be a native timestamp and extensions native integers and
    /// booleans, as the CloudEvents Python SDK writes them (through pika: a long long integer of
    /// milliseconds).
    #[test]
    fn binary_attributes_may_be_native_amqp_values() {
        let expected = DateTime::parse_from_rfc3339("2026-12-01T07:18:57.406Z").expect("time").with_timezone(&Utc);
        let times = [
            AMQPValue::LongLongInt(expected.timestamp_millis()),
            AMQPValue::Timestamp(expected.timestamp() as u64),
            AMQPValue::LongUInt(expected.timestamp() as u32),
            AMQPValue::LongString(LongString::from("2026-12-01T07:18:57.406Z")),
        ];
        for time in times {
            let mut h = headers(&[
                ("cloudEvents_specversion", "1.0"),
                ("cloudEvents_id", "n-1"),
                ("cloudEvents_source", "/python"),
                ("cloudEvents_type", "workflow.created"),
            ]);
            h.insert(ShortString::from("cloudEvents_time"), time.clone());
            h.insert(ShortString::from("cloudEvents_attempt"), AMQPValue::LongLongInt(3));
            h.insert(ShortString::from("cloudEvents_urgent"), AMQPValue::Boolean(true));
            let props =
                BasicProperties::default().with_content_type(ShortString::from("application/json")).with_headers(h);
            let e = Envelope::parse("workflow.created", &props, workflow_data().to_string().as_bytes(), limits())
                .unwrap_or_else(|p| panic!("{time:?}: {p}"));
            let want = if matches!(time, AMQPValue::Timestamp(_) | AMQPValue::LongUInt(_)) {
                DateTime::from_timestamp(expected.timestamp(), 0)
            } else {
                Some(expected)
            };
            assert_eq!(e.time, want, "{time:?}");
        }
        let mut h = headers(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "n-2"),
            ("ce_source", "/python"),
            ("ce_type", "workflow.created"),
        ]);
        h.insert(ShortString::from("ce_time"), AMQPValue::LongLongInt(i64::MAX));
        let props = BasicProperties::default().with_content_type(ShortString::from("application/json")).with_headers(h);
        let poison = Envelope::parse("workflow.created", &props, workflow_data().to_string().as_bytes(), limits())
            .expect_err("a time out of range is refused");
        assert!(poison.detail.starts_with("time:"), "{poison}");
    }

    #[test]
    fn plain_json_takes_its_type_from_the_property_or_the_routing_key_and_ignores_type_id() {
        let props = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers(&[("__TypeId__", "com.example.WorkflowCreated")]));
        let body = workflow_data().to_string();
        let e = Envelope::parse("workflow.created", &props, body.as_bytes(), limits()).expect("valid");
        assert_eq!(e.shape, Shape::Plain);
        assert_eq!(e.event_type, EventType::WorkflowCreated);
        // Deterministic: the same body on the same key is the same event.
        let again = Envelope::parse("workflow.created", &props, body.as_bytes(), limits()).expect("valid");
        assert_eq!(e.id, again.id);
        let other = Envelope::parse("workflow.created", &props, br#"{"name":"Other"}"#, limits()).expect("valid");
        assert_ne!(e.id, other.id);

        let typed =
            props.clone().with_type(ShortString::from("workflow.created")).with_message_id(ShortString::from("m-1"));
        let e = Envelope::parse("workflow.created", &typed, body.as_bytes(), limits()).expect("valid");
        assert_eq!(e.id, "m-1");
        assert_eq!(e.event_type, EventType::WorkflowCreated);
        // From the system (a test of the type property alone): the routing key is not checked.
        let ours = typed.clone().with_user_id(ShortString::from("automation"));
        let e = Envelope::parse("some.key", &ours, body.as_bytes(), limits()).expect("valid");
        assert_eq!(e.event_type, EventType::WorkflowCreated);
    }

    #[test]
    fn messages_that_cannot_be_taken_say_why() {
        let cases: Vec<(BasicProperties, Vec<u8>, &str, PoisonCode)> = vec![
            (BasicProperties::default(), b"{not json".to_vec(), "workflow.created", PoisonCode::InvalidJson),
            (BasicProperties::default(), vec![0xff, 0xfe, 0x00], "workflow.created", PoisonCode::NotUtf8),
            (
                BasicProperties::default().with_content_type(ShortString::from("application/x-java-serialized-object")),
                vec![0xAC, 0xED, 0x00, 0x05],
                "workflow.created",
                PoisonCode::JavaSerialized,
            ),
            (BasicProperties::default(), br#"{"name":"x"}"#.to_vec(), "workflow.exploded", PoisonCode::UnknownType),
            (BasicProperties::default(), br#"{"name":""}"#.to_vec(), "workflow.created", PoisonCode::SchemaInvalid),
            // More than decimal(19, 4) holds.
            (
                BasicProperties::default(),
                json!({"workflowId": Uuid::nil(), "title": "t", "requesterId": Uuid::nil(), "amount": 1e15})
                    .to_string()
                    .into_bytes(),
                "approval.requested",
                PoisonCode::SchemaInvalid,
            ),
            (BasicProperties::default(), vec![b' '; 300 * 1024], "workflow.created", PoisonCode::TooLarge),
            (
                structured_props(),
                json!({"specversion": "0.3", "id": "1", "source": "s", "type": "workflow.created", "data": {}})
                    .to_string()
                    .into_bytes(),
                "workflow.created",
                PoisonCode::InvalidCloudEvent,
            ),
            (
                structured_props(),
                json!({"specversion": "1.0", "source": "s", "type": "workflow.created", "data": {}})
                    .to_string()
                    .into_bytes(),
                "workflow.created",
                PoisonCode::InvalidCloudEvent,
            ),
        ];
        for (props, body, key, code) in cases {
            let poison = Envelope::parse(key, &props, &body, limits()).expect_err("must be refused");
            assert_eq!(poison.code, code, "{poison}");
            assert!(!poison.detail.is_empty());
        }
    }

    #[test]
    fn schema_errors_name_the_field() {
        let poison = Envelope::parse(
            "workflow.created",
            &BasicProperties::default(),
            br#"{"name":"x","approvalSlaHours":0}"#,
            limits(),
        )
        .expect_err("bad sla");
        assert_eq!(poison.code, PoisonCode::SchemaInvalid);
        assert!(poison.detail.starts_with("data.approvalSlaHours:"), "{}", poison.detail);
        assert!(poison.event_id.is_some());
    }

    #[test]
    fn a_restricted_publisher_may_send_only_its_types() {
        let publishers = BTreeMap::from([("orders".to_string(), vec!["approval.*".to_string()])]);
        let limits = Limits { max_bytes: 1 << 20, publishers: &publishers, system: system() };
        let props = BasicProperties::default().with_user_id(ShortString::from("orders"));
        let poison = Envelope::parse("workflow.created", &props, workflow_data().to_string().as_bytes(), limits)
            .expect_err("not allowed");
        assert_eq!(poison.code, PoisonCode::PublisherNotAllowed);

        let body = json!({"workflowId": Uuid::nil(), "title": "t", "requesterId": Uuid::nil()});
        assert!(Envelope::parse("approval.requested", &props, body.to_string().as_bytes(), limits).is_ok());
        let other = BasicProperties::default().with_user_id(ShortString::from("someone-else"));
        assert!(Envelope::parse("workflow.created", &other, workflow_data().to_string().as_bytes(), limits).is_ok());
    }

    #[test]
    fn a_cloud_event_round_trips_through_its_structured_form() {
        let body = json!({
            "specversion": "1.0", "id": "e-2", "source": "/x", "type": "workflow.created",
            "chaindepth": 3, "causationid": "e-1", "data": workflow_data()
        });
        let e = Envelope::parse("workflow.created", &BasicProperties::default(), body.to_string().as_bytes(), limits())
            .expect("valid");
        assert_eq!(e.shape, Shape::Structured, "detected from the body");
        assert_eq!(e.chain_depth, 3);
        let again = serde_json::to_vec(&e.to_cloud_event()).expect("json");
        let e2 = Envelope::parse("workflow.created", &structured_props(), &again, limits()).expect("valid");
        assert_eq!(e2.id, e.id);
        assert_eq!(e2.chain_depth, 3);
        assert_eq!(e2.causation_id.as_deref(), Some("e-1"));
        assert_eq!(e2.correlation_id, e.correlation_id);
    }

    #[test]
    fn an_outsider_is_a_service_whatever_it_claims_and_the_system_is_what_it_says() {
        let body = json!({
            "specversion": "1.0", "id": "e-3", "source": "/x", "type": "approval.decided",
            "actortype": "rule", "actorid": "r-1",
            "data": {"approvalId": Uuid::nil(), "status": "APPROVED"}
        });
        let outsider = structured_props().with_user_id(ShortString::from("orders"));
        let e = Envelope::parse("approval.decided", &outsider, body.to_string().as_bytes(), limits()).expect("valid");
        assert_eq!(e.actor_type, ActorType::Service);
        assert_eq!(e.origin, Origin::External { user: Some("orders".into()) });
        let ours = structured_props().with_user_id(ShortString::from("automation"));
        let e = Envelope::parse("approval.decided", &ours, body.to_string().as_bytes(), limits()).expect("valid");
        assert_eq!(e.actor_type, ActorType::Rule);
        assert_eq!(e.origin, Origin::System);
    }

    #[test]
    fn outsiders_cannot_send_internal_types_or_a_type_under_another_routing_key() {
        let escalate = json!({
            "specversion": "1.0", "id": "e-4", "source": "/x", "type": "approval.escalate",
            "data": {"approvalId": Uuid::nil(), "reason": "r", "toRole": "admin"}
        });
        let poison =
            Envelope::parse("approval.escalate", &structured_props(), escalate.to_string().as_bytes(), limits())
                .expect_err("internal");
        assert_eq!(poison.code, PoisonCode::PublisherNotAllowed, "{poison}");
        let workflow = json!({
            "specversion": "1.0", "id": "e-5", "source": "/x", "type": "workflow.created", "data": workflow_data()
        });
        let poison =
            Envelope::parse("approval.requested", &structured_props(), workflow.to_string().as_bytes(), limits())
                .expect_err("mismatch");
        assert_eq!(poison.code, PoisonCode::RoutingKeyMismatch, "{poison}");
        let api = json!({
            "specversion": "1.0", "id": "e-6", "source": "/automation-engine/api", "type": "workflow.created",
            "data": workflow_data()
        });
        let poison = Envelope::parse("workflow.created", &structured_props(), api.to_string().as_bytes(), limits())
            .expect_err("the system's source");
        assert_eq!(poison.code, PoisonCode::PublisherNotAllowed, "{poison}");
    }

    #[test]
    fn an_event_is_known_by_its_source_and_id() {
        let of = |source: &str| {
            let body = json!({"specversion": "1.0", "id": "1", "source": source, "type": "workflow.created", "data": workflow_data()});
            Envelope::parse("workflow.created", &structured_props(), body.to_string().as_bytes(), limits())
        };
        let (orders, billing) = (of("/orders").expect("valid"), of("/billing").expect("valid"));
        assert_ne!(orders.scoped_id(), billing.scoped_id(), "one id under two sources is two events");
        assert_eq!(orders.event_ref(), ("1", "/orders"));
        let poison = of(&"/s".repeat(200)).expect_err("a source longer than the inbox holds");
        assert_eq!(poison.code, PoisonCode::InvalidCloudEvent, "{poison}");
        assert!(poison.detail.contains("source"), "{poison}");
    }
}
