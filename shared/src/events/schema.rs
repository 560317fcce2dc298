//! JSON Schemas of the inbound events and the AsyncAPI document of the exchanges, generated from
//! the Rust types. The committed copies under `schemas/` are checked against these by a test;
//! `make schemas` rewrites them.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, schema_for};
use serde_json::{Map, Value, json};

use super::{
    ApprovalDecided, ApprovalEscalate, ApprovalRequested, AuditRecorded, AutomationCancelled, AutomationRequested,
    EventRejected, EventType, NotificationType, RuleDeleted, WorkflowCreated, WorkflowStatusChanged,
};
use crate::rules::RuleDefinition;

/// Where the schemas say they live; only an identifier, nothing is fetched from it.
const SCHEMA_BASE: &str = "https://automation-engine.local/schemas";

fn data_schema(event_type: EventType) -> Value {
    fn of<T: JsonSchema>() -> Value {
        schema_for!(T).to_value()
    }
    match event_type {
        EventType::WorkflowCreated => of::<WorkflowCreated>(),
        EventType::WorkflowStatusChanged => of::<WorkflowStatusChanged>(),
        EventType::ApprovalRequested => of::<ApprovalRequested>(),
        EventType::ApprovalDecided => of::<ApprovalDecided>(),
        EventType::ApprovalEscalate => of::<ApprovalEscalate>(),
        EventType::AuditRecorded => of::<AuditRecorded>(),
        EventType::RuleUpserted => of::<RuleDefinition>(),
        EventType::RuleDeleted => of::<RuleDeleted>(),
        EventType::AutomationRequested => of::<AutomationRequested>(),
        EventType::AutomationCancelled => of::<AutomationCancelled>(),
    }
}

/// The schema of one event type, as a structured CloudEvent whose `data` is that type's data.
pub fn event_schema(event_type: EventType) -> Value {
    let mut data = data_schema(event_type);
    let defs = data.as_object_mut().and_then(|o| o.remove("$defs"));
    if let Some(o) = data.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA_BASE}/events/{event_type}.json"),
        "title": event_type.as_str(),
        "description": format!(
            "A `{event_type}` event as a CloudEvents 1.0 structured message. In binary mode the \
             attributes travel as `ce_` headers and the body is `data`; as plain JSON the body is \
             `data` and the routing key (or the AMQP `type` property) is the type."
        ),
        "type": "object",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Unique per event; a redelivery with the same id is applied once."},
            "source": {"type": "string", "minLength": 1},
            "type": {"const": event_type.as_str()},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string"},
            "datacontenttype": {"type": "string", "pattern": "json"},
            "actorid": {"type": "string", "description": "Who asked for this (CloudEvents extension)."},
            "correlationid": {"type": "string"},
            "causationid": {"type": "string"},
            "traceparent": {"type": "string", "description": "W3C trace context."},
            "data": data
        }
    });
    if let (Some(defs), Some(o)) = (defs, schema.as_object_mut()) {
        o.insert("$defs".into(), defs);
    }
    schema
}

/// The schema a notification's message refers to: `event.rejected` has its own, naming its data.
fn notification_payload(kind: NotificationType) -> &'static str {
    match kind {
        NotificationType::EventRejected => "#/components/schemas/notification_event_rejected",
        _ => "#/components/schemas/notification",
    }
}

/// The AsyncAPI 3.0 document of the exchanges, routing keys and messages.
pub fn asyncapi(prefix: &str) -> Value {
    // Inlined: a `$defs` inside an AsyncAPI component would not resolve.
    let mut event_rejected_data = SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<EventRejected>()
        .to_value();
    if let Some(o) = event_rejected_data.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut inbound = Map::new();
    for event_type in EventType::ALL {
        let name = event_type.as_str().replace('.', "_");
        messages.insert(
            name.clone(),
            json!({
                "name": event_type.as_str(),
                "title": event_type.as_str(),
                "contentType": "application/cloudevents+json",
                "summary": format!("Asks the system to apply `{event_type}`. Routed to `{prefix}.{}`.", event_type.queue().suffix()),
                "payload": {"$ref": format!("../schemas/events/{event_type}.json")},
                "bindings": {"amqp": {"messageType": event_type.as_str(), "deliveryMode": 2}}
            }),
        );
        inbound.insert(name.clone(), json!({"$ref": format!("#/components/messages/{name}")}));
    }
    let mut outbound = Map::new();
    for kind in NotificationType::ALL {
        let name = format!("notification_{}", kind.as_str().replace('.', "_"));
        messages.insert(
            name.clone(),
            json!({
                "name": kind.as_str(),
                "title": kind.as_str(),
                "contentType": "application/cloudevents+json",
                "summary": kind.summary(),
                "payload": {"$ref": notification_payload(*kind)}
            }),
        );
        outbound.insert(name.clone(), json!({"$ref": format!("#/components/messages/{name}")}));
    }
    channels.insert(
        "events".into(),
        json!({
            "address": format!("{prefix}.events"),
            "description": "Topic exchange for everything that asks the system to do something. The routing key is the event type.",
            "messages": inbound,
            "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": format!("{prefix}.events"), "type": "topic", "durable": true, "autoDelete": false}}}
        }),
    );
    channels.insert(
        "notifications".into(),
        json!({
            "address": format!("{prefix}.notifications"),
            "description": "Topic exchange for what the system did. Exactly one notification per applied or refused event; `causationid` is the id of that event.",
            "messages": outbound,
            "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": format!("{prefix}.notifications"), "type": "topic", "durable": true, "autoDelete": false}}}
        }),
    );
    channels.insert(
        "dead".into(),
        json!({
            "address": format!("{prefix}.dead"),
            "description": "Messages that could not be taken or ran out of attempts, with `x-dead-reason`, `x-error-kind`, `x-origin-queue` headers. Kept whole in the dead-letter store.",
            "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": format!("{prefix}.dead"), "type": "topic", "durable": true, "autoDelete": false}}}
        }),
    );
    operations.insert(
        "publishEvent".into(),
        json!({"action": "send", "channel": {"$ref": "#/channels/events"}, "summary": "Publish an event (Spring Boot services, the API)."}),
    );
    operations.insert(
        "receiveNotification".into(),
        json!({"action": "receive", "channel": {"$ref": "#/channels/notifications"}, "summary": "React to what the system did."}),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "automation-engine",
            "version": "1.0.0",
            "description": "Events in, notifications out. Every exchange and queue name starts with the configured prefix (here the default)."
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": {
                "notification": {
                    "type": "object",
                    "required": ["specversion", "id", "source", "type", "data", "causationid"],
                    "properties": {
                        "specversion": {"const": "1.0"},
                        "id": {"type": "string", "description": "Stable per notification: a republish after a crash carries the same id."},
                        "source": {"const": "/automation-engine/worker"},
                        "type": {"type": "string"},
                        "time": {"type": "string", "format": "date-time"},
                        "causationid": {"type": "string", "description": "The id of the event that caused this notification."},
                        "correlationid": {"type": "string"},
                        "data": {"type": "object", "description": "The entity after the change; for event.rejected: eventId, type, reason, code."}
                    }
                },
                "notification_event_rejected": {
                    "description": "A refusal: `data` says which event was refused, why, and the machine-readable code.",
                    "allOf": [
                        {"$ref": "#/components/schemas/notification"},
                        {"properties": {"type": {"const": NotificationType::EventRejected.as_str()}, "data": event_rejected_data}}
                    ]
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repository_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn pretty(value: &Value) -> String {
        serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
    }

    /// The committed schemas are what the code accepts. `UPDATE_SCHEMAS=1` (or `make schemas`)
    /// rewrites them.
    #[test]
    fn committed_schemas_match_the_rust_types() {
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut expected: Vec<(PathBuf, String)> = EventType::ALL
            .iter()
            .map(|t| (repository_root().join(format!("schemas/events/{t}.json")), pretty(&event_schema(*t))))
            .collect();
        expected.push((repository_root().join("schemas/asyncapi.json"), pretty(&asyncapi("automation"))));
        for (path, content) in expected {
            if update {
                std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
                std::fs::write(&path, &content).expect("write");
            } else {
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(committed == content, "{} is stale: run `make schemas`", path.display());
            }
        }
    }

    #[test]
    fn the_asyncapi_document_names_every_notification_and_every_refusal_code() {
        let doc = asyncapi("automation");
        let messages = &doc["components"]["messages"];
        for kind in NotificationType::ALL {
            let message = &messages[format!("notification_{}", kind.as_str().replace('.', "_"))];
            assert_eq!(message["name"], kind.as_str());
            assert_eq!(message["summary"], kind.summary());
        }
        let rejected = &doc["components"]["schemas"]["notification_event_rejected"]["allOf"][1]["properties"];
        let codes: Vec<&str> = rejected["data"]["properties"]["code"]["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["const"].as_str())
            .collect();
        let expected: Vec<&str> = crate::events::RejectCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, expected);
    }

    #[test]
    fn the_schema_carries_the_validation_constraints() {
        let schema = event_schema(EventType::ApprovalRequested);
        let title = &schema["properties"]["data"]["properties"]["title"];
        assert_eq!(title["minLength"], 1);
        assert_eq!(title["maxLength"], 300);
        assert_eq!(schema["properties"]["data"]["properties"]["currency"]["pattern"], "^[A-Z]{3}$");
    }
}
