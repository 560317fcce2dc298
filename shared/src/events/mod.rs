//! The v1 inbound event types, their `data`, and the CloudEvents the system publishes.
//!
//! One enum names the types ([`EventType`]); one enum carries the decoded data ([`EventData`]).
//! Each data struct derives serde, `garde` validation and a JSON Schema from the same attributes,
//! so the committed schemas cannot drift from what the worker accepts.

pub mod envelope;
pub mod notifications;
pub mod outcome;
pub mod schema;

use std::fmt;

use chrono::{DateTime, Utc};
use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::lifecycle::{Decision, InitialWorkflowStatus, WorkflowStatus};
use crate::rules::RuleDefinition;

pub use envelope::{Envelope, Poison, PoisonCode, Shape};
pub use notifications::{AuditNotice, EventRejected, Notification, NotificationType, RuleFired};
pub use outcome::{EventState, RejectCode};

/// The namespace of every id this system derives (entity ids from event ids, ids of messages
/// without a `message_id`, idempotency keys).
pub const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b6f_2a1e_8c4d_4f0b_9a7e_3d2c_1b0a_9f8e);

/// A stable UUID for `what` (for example `"approval"`) derived from `from` (an event id).
pub fn derived_id(what: &str, from: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, format!("{what}:{from}").as_bytes())
}

/// Which work queue an event type is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkQueue {
    /// Approvals, workflows, audit and rules: short database transactions.
    Commands,
    /// The runs of automations (their start messages): may call out to the world and take long.
    Tasks,
}

impl WorkQueue {
    pub const ALL: [WorkQueue; 2] = [WorkQueue::Commands, WorkQueue::Tasks];

    pub fn suffix(self) -> &'static str {
        match self {
            WorkQueue::Commands => "commands",
            WorkQueue::Tasks => "tasks",
        }
    }
}

macro_rules! event_types {
    ($($variant:ident => $name:literal, $queue:ident;)+) => {
        /// The inbound event types of v1. The routing key of an event is its type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType { $($variant,)+ }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$variant,)+];

            /// The CloudEvents `type` and the routing key.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $name,)+ }
            }

            pub fn parse(s: &str) -> Option<EventType> {
                match s { $($name => Some(EventType::$variant),)+ _ => None }
            }

            pub fn queue(self) -> WorkQueue {
                match self { $(EventType::$variant => WorkQueue::$queue,)+ }
            }
        }
    };
}

event_types! {
    WorkflowCreated => "workflow.created", Commands;
    WorkflowStatusChanged => "workflow.status_changed", Commands;
    ApprovalRequested => "approval.requested", Commands;
    ApprovalDecided => "approval.decided", Commands;
    ApprovalEscalate => "approval.escalate", Commands;
    AuditRecorded => "audit.recorded", Commands;
    RuleUpserted => "rule.upserted", Commands;
    RuleDeleted => "rule.deleted", Commands;
    AutomationRequested => "automation.requested", Commands;
    AutomationCancelled => "automation.cancelled", Commands;
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EventType::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown event type {s:?}")))
    }
}

/// `workflow.created`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowCreated {
    /// Derived from the event id when left out.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    #[garde(length(chars, min = 1, max = 200))]
    pub name: String,
    #[garde(length(chars, max = 4000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ACTIVE` when left out.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InitialWorkflowStatus>,
    /// How long an approval may stay open before `approvals.escalate_stale` escalates it.
    #[garde(range(min = 1, max = 8760))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_sla_hours: Option<u32>,
}

/// `workflow.status_changed`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatusChanged {
    #[garde(skip)]
    pub workflow_id: Uuid,
    #[garde(skip)]
    pub status: WorkflowStatus,
    /// Refused as stale unless the workflow is at this version.
    #[garde(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u32>,
}

/// `approval.requested`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequested {
    /// Derived from the event id when left out.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
    #[garde(skip)]
    pub workflow_id: Uuid,
    #[garde(length(chars, min = 1, max = 300))]
    pub title: String,
    #[garde(range(min = 0.0, max = 999_999_999_999_999.9))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<f64>,
    /// ISO 4217 code, e.g. `EUR`.
    #[garde(pattern(r"^[A-Z]{3}$"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[garde(skip)]
    pub requester_id: Uuid,
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
}

/// `approval.decided`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecided {
    #[garde(skip)]
    pub approval_id: Uuid,
    #[garde(skip)]
    pub status: Decision,
    #[garde(length(chars, max = 4000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[garde(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u32>,
}

/// `approval.escalate`: hand a `PENDING` approval to a role or a user. Sent by rules and by
/// `approvals.escalate_stale` (an extension of the v1 types).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalEscalate {
    #[garde(skip)]
    pub approval_id: Uuid,
    #[garde(length(min = 1, max = 32))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_role: Option<String>,
    #[garde(length(min = 1, max = 64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_user: Option<String>,
    #[garde(length(chars, max = 4000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `audit.recorded`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecorded {
    #[garde(length(chars, min = 1, max = 64), pattern(r"^[A-Za-z][A-Za-z0-9_.-]*$"))]
    pub entity: String,
    #[garde(length(chars, min = 1, max = 64))]
    pub entity_id: String,
    #[garde(length(chars, min = 1, max = 64))]
    pub action: String,
    /// Free-form, but an object (`{"format": "pdf"}`), so every client can type it as a map.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
}

/// `rule.deleted`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct RuleDeleted {
    #[garde(skip)]
    pub rule_id: Uuid,
}

/// `automation.requested`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct AutomationRequested {
    /// Derived from the event id when left out.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// A registered task, e.g. `webhook.call`.
    #[garde(length(min = 1, max = 128), pattern(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"))]
    pub automation: String,
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    /// Start no earlier than this many seconds after the request (at most 30 days).
    #[garde(range(max = 2_592_000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_seconds: Option<u64>,
    /// Start no earlier than this time.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
}

/// `automation.cancelled`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct AutomationCancelled {
    #[garde(skip)]
    pub run_id: Uuid,
}

/// The decoded, validated `data` of an inbound event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    WorkflowCreated(WorkflowCreated),
    WorkflowStatusChanged(WorkflowStatusChanged),
    ApprovalRequested(ApprovalRequested),
    ApprovalDecided(ApprovalDecided),
    ApprovalEscalate(ApprovalEscalate),
    AuditRecorded(AuditRecorded),
    RuleUpserted(RuleDefinition),
    RuleDeleted(RuleDeleted),
    AutomationRequested(AutomationRequested),
    AutomationCancelled(AutomationCancelled),
}

impl EventData {
    /// Decodes and validates `data` for `event_type`. The error names the offending field as a
    /// path under `data`, e.g. `data.amount: lower than 0`.
    pub fn decode(event_type: EventType, data: &Value) -> Result<EventData, String> {
        fn typed<T>(data: &Value) -> Result<T, String>
        where
            T: for<'de> Deserialize<'de> + Validate<Context = ()>,
        {
            let value: T = serde_path_to_error::deserialize(data).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner().to_string();
                if path == "." { format!("data: {inner}") } else { format!("data.{path}: {inner}") }
            })?;
            value.validate().map_err(|report| {
                report
                    .iter()
                    .map(|(path, error)| {
                        let path = camel_case_path(&path.to_string());
                        if path.is_empty() { format!("data: {error}") } else { format!("data.{path}: {error}") }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            Ok(value)
        }
        if !data.is_object() {
            return Err("data: must be a JSON object".into());
        }
        Ok(match event_type {
            EventType::WorkflowCreated => EventData::WorkflowCreated(typed(data)?),
            EventType::WorkflowStatusChanged => EventData::WorkflowStatusChanged(typed(data)?),
            EventType::ApprovalRequested => EventData::ApprovalRequested(typed(data)?),
            EventType::ApprovalDecided => EventData::ApprovalDecided(typed(data)?),
            EventType::ApprovalEscalate => EventData::ApprovalEscalate(typed(data)?),
            EventType::AuditRecorded => EventData::AuditRecorded(typed(data)?),
            EventType::RuleUpserted => EventData::RuleUpserted(typed(data)?),
            EventType::RuleDeleted => EventData::RuleDeleted(typed(data)?),
            EventType::AutomationRequested => EventData::AutomationRequested(typed(data)?),
            EventType::AutomationCancelled => EventData::AutomationCancelled(typed(data)?),
        })
    }

    pub fn event_type(&self) -> EventType {
        match self {
            EventData::WorkflowCreated(_) => EventType::WorkflowCreated,
            EventData::WorkflowStatusChanged(_) => EventType::WorkflowStatusChanged,
            EventData::ApprovalRequested(_) => EventType::ApprovalRequested,
            EventData::ApprovalDecided(_) => EventType::ApprovalDecided,
            EventData::ApprovalEscalate(_) => EventType::ApprovalEscalate,
            EventData::AuditRecorded(_) => EventType::AuditRecorded,
            EventData::RuleUpserted(_) => EventType::RuleUpserted,
            EventData::RuleDeleted(_) => EventType::RuleDeleted,
            EventData::AutomationRequested(_) => EventType::AutomationRequested,
            EventData::AutomationCancelled(_) => EventType::AutomationCancelled,
        }
    }

    pub fn to_value(&self) -> Value {
        let value = match self {
            EventData::WorkflowCreated(d) => serde_json::to_value(d),
            EventData::WorkflowStatusChanged(d) => serde_json::to_value(d),
            EventData::ApprovalRequested(d) => serde_json::to_value(d),
            EventData::ApprovalDecided(d) => serde_json::to_value(d),
            EventData::ApprovalEscalate(d) => serde_json::to_value(d),
            EventData::AuditRecorded(d) => serde_json::to_value(d),
            EventData::RuleUpserted(d) => serde_json::to_value(d),
            EventData::RuleDeleted(d) => serde_json::to_value(d),
            EventData::AutomationRequested(d) => serde_json::to_value(d),
            EventData::AutomationCancelled(d) => serde_json::to_value(d),
        };
        // Serialising plain data structs into a Value cannot fail.
        value.unwrap_or(Value::Null)
    }
}

/// Turns a validation path of Rust field names (`then[0].to_role`) into the camelCase names
/// clients send (`then[0].toRole`).
pub fn camel_case_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A CloudEvents 1.0 event in structured JSON form: what the system publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub datacontenttype: Option<String>,
    #[serde(default)]
    pub data: Value,
    /// Extension attributes (`actorid`, `correlationid`, `causationid`, `chaindepth`,
    /// `traceparent`).
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

impl CloudEvent {
    pub fn new(id: impl Into<String>, source: impl Into<String>, event_type: impl Into<String>, data: Value) -> Self {
        CloudEvent {
            specversion: "1.0".into(),
            id: id.into(),
            source: source.into(),
            event_type: event_type.into(),
            time: Some(Utc::now()),
            subject: None,
            datacontenttype: Some("application/json".into()),
            data,
            extensions: Map::new(),
        }
    }

    pub fn with_extension(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(name.into(), value.into());
        self
    }

    pub fn with_optional_extension(self, name: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(value) => self.with_extension(name, value),
            None => self,
        }
    }
}

/// The CloudEvents extension names this system reads and writes (lowercase, as the CloudEvents
/// spec requires; the camelCase `actorId` is accepted on input).
pub mod extension {
    pub const ACTOR_ID: &str = "actorid";
    pub const ACTOR_TYPE: &str = "actortype";
    pub const CORRELATION_ID: &str = "correlationid";
    pub const CAUSATION_ID: &str = "causationid";
    pub const CHAIN_DEPTH: &str = "chaindepth";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_round_trips_through_its_name() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(*t));
        }
        assert_eq!(EventType::parse("approval.approved"), None);
    }

    #[test]
    fn decode_names_the_wrong_field() {
        let error = EventData::decode(
            EventType::ApprovalRequested,
            &json!({"workflowId": Uuid::nil(), "title": "x", "requesterId": Uuid::nil(), "amount": -1}),
        )
        .expect_err("negative amount");
        assert!(error.starts_with("data.amount:"), "{error}");

        let error =
            EventData::decode(EventType::ApprovalRequested, &json!({"workflowId": "nope"})).expect_err("bad uuid");
        assert!(error.starts_with("data.workflowId:"), "{error}");

        let error =
            EventData::decode(EventType::ApprovalDecided, &json!({"approvalId": Uuid::nil(), "status": "MAYBE"}))
                .expect_err("bad status");
        assert!(error.starts_with("data.status:"), "{error}");

        let error = EventData::decode(
            EventType::ApprovalRequested,
            &json!({"workflowId": Uuid::nil(), "title": "t", "requesterId": Uuid::nil(), "currency": "euro"}),
        )
        .expect_err("bad currency");
        assert!(error.starts_with("data.currency:"), "{error}");

        let error = EventData::decode(EventType::WorkflowCreated, &json!([1, 2])).expect_err("not an object");
        assert_eq!(error, "data: must be a JSON object");
    }

    #[test]
    fn unknown_fields_are_tolerated_on_the_bus() {
        let data = EventData::decode(
            EventType::WorkflowCreated,
            &json!({"name": "Purchases", "addedInV2": true, "actorId": "svc"}),
        )
        .expect("valid");
        assert!(matches!(data, EventData::WorkflowCreated(WorkflowCreated { ref name, .. }) if name == "Purchases"));
    }

    #[test]
    fn validation_paths_use_the_names_clients_send() {
        assert_eq!(camel_case_path("then[0].to_role"), "then[0].toRole");
        assert_eq!(camel_case_path("approval_sla_hours"), "approvalSlaHours");
    }

    #[test]
    fn derived_ids_are_stable_and_distinct_per_purpose() {
        assert_eq!(derived_id("approval", "e1"), derived_id("approval", "e1"));
        assert_ne!(derived_id("approval", "e1"), derived_id("workflow", "e1"));
        assert_ne!(derived_id("approval", "e1"), derived_id("approval", "e2"));
    }
}
