//! JSON Schemas of the inbound events and the AsyncAPI document of the exchanges, generated from
//! the Rust types. The committed copies under `schemas/` are checked against these by a test;
//! `make schemas` rewrites them.
//!
//! Written for client generators (quicktype, Modelina, datamodel-codegen, openapi-typescript):
//! every type has a title, optional attributes accept `null` (Jackson writes `"time": null`),
//! free-form members are object schemas, never `true`, and integers carry `int32`/`int64` with a
//! minimum instead of the `uint32`/`uint64` formats generators do not know.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema as OpenApiSchema;

use super::{
    ApprovalDecided, ApprovalEscalate, ApprovalRequested, AuditRecorded, AutomationCancelled, AutomationRequested,
    EventType, NotificationType, RuleDeleted, WorkflowCreated, WorkflowStatusChanged,
};
use crate::db::{approvals::Approval, rules::Rule, runs::Run, workflows::Workflow};
use crate::rules::RuleDefinition;

/// Where the schemas say they live; only an identifier, nothing is fetched from it.
const SCHEMA_BASE: &str = "https://automation-engine.local/schemas";
/// The source of every notification.
const WORKER_SOURCE: &str = "/automation-engine/worker";

/// `approval.requested` → `ApprovalRequested`: the stem of the generated class names.
pub fn type_name(dotted: &str) -> String {
    dotted
        .split(['.', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// The schema of `T` as generators want it (see the module docs), with its `$defs`.
fn generated<T: JsonSchema>() -> Value {
    let mut value = SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<T>().to_value();
    for_generators(&mut value);
    if let Some(o) = value.as_object_mut() {
        o.remove("$schema");
    }
    value
}

/// Rewrites what generators stumble on, everywhere in `schema`: `uint32`/`uint64` formats become
/// `int64` with `minimum: 0` (and the `uint32` maximum), and a member schema that is `true`
/// (any JSON) becomes an object schema.
fn for_generators(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let unsigned_max = match object.get("format").and_then(Value::as_str) {
                Some("uint32") => Some(Some(u32::MAX as u64)),
                Some("uint64") => Some(None),
                Some("uint8") => Some(Some(u8::MAX as u64)),
                Some("uint16") => Some(Some(u16::MAX as u64)),
                _ => None,
            };
            if let Some(max) = unsigned_max {
                object.insert("format".into(), json!("int64"));
                let minimum = object.get("minimum").and_then(Value::as_f64).unwrap_or(0.0).max(0.0);
                object.insert("minimum".into(), json!(minimum as u64));
                if let Some(max) = max
                    && object.get("maximum").is_none()
                {
                    object.insert("maximum".into(), json!(max));
                }
            }
            for (key, member) in object.iter_mut() {
                if (key == "properties" || key == "$defs")
                    && let Value::Object(members) = member
                {
                    for member in members.values_mut().filter(|m| **m == Value::Bool(true)) {
                        *member = json!({"type": ["object", "null"], "additionalProperties": true});
                    }
                }
                for_generators(member);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(for_generators),
        _ => {}
    }
}

fn data_schema(event_type: EventType) -> Value {
    match event_type {
        EventType::WorkflowCreated => generated::<WorkflowCreated>(),
        EventType::WorkflowStatusChanged => generated::<WorkflowStatusChanged>(),
        EventType::ApprovalRequested => generated::<ApprovalRequested>(),
        EventType::ApprovalDecided => generated::<ApprovalDecided>(),
        EventType::ApprovalEscalate => generated::<ApprovalEscalate>(),
        EventType::AuditRecorded => generated::<AuditRecorded>(),
        EventType::RuleUpserted => generated::<RuleDefinition>(),
        EventType::RuleDeleted => generated::<RuleDeleted>(),
        EventType::AutomationRequested => generated::<AutomationRequested>(),
        EventType::AutomationCancelled => generated::<AutomationCancelled>(),
    }
}

/// The name of an event type's data schema under `$defs`: `ApprovalRequestedData`.
pub fn data_name(event_type: EventType) -> String {
    format!("{}Data", type_name(event_type.as_str()))
}

/// An optional CloudEvents attribute: absent, or `null` as Jackson writes it, or a string.
fn optional_string(description: &str) -> Value {
    json!({"type": ["string", "null"], "description": description})
}

/// The CloudEvents attributes of the structured form, for `type`.
fn attributes(type_schema: Value) -> Map<String, Value> {
    let Value::Object(attributes) = json!({
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Unique per event and source; a redelivery with the same id is applied once."},
        "source": {"type": "string", "minLength": 1, "description": "Who sent it, e.g. `/spring/orders`."},
        "type": type_schema,
        "time": {"type": ["string", "null"], "format": "date-time", "description": "RFC 3339."},
        "subject": optional_string("What the event is about, for routing."),
        "datacontenttype": {"type": ["string", "null"], "pattern": "json", "description": "A JSON media type, e.g. `application/json`."},
        "dataschema": {"type": ["string", "null"], "format": "uri"},
        "actorid": optional_string("Who asked for this (CloudEvents extension); for a service publisher the actor of the event."),
        "correlationid": optional_string("Carried through to every notification and follow-up event."),
        "causationid": optional_string("The event that caused this one."),
        "traceparent": optional_string("W3C trace context."),
        "tracestate": optional_string("W3C trace context: vendor state that goes with `traceparent`.")
    }) else {
        unreachable!("an object literal")
    };
    attributes
}

/// An example `data` of each type: in the schema's `examples`, and taken by the worker (a test
/// says so).
fn example_data(event_type: EventType) -> Value {
    let workflow = "0190f7a2-5c1e-7c3a-9a41-3f8e2b6d1c20";
    let approval = "0190f7a2-6a00-7b00-8c00-0000000000a1";
    match event_type {
        EventType::WorkflowCreated => json!({"name": "Purchases over 1000 EUR", "approvalSlaHours": 48}),
        EventType::WorkflowStatusChanged => json!({"workflowId": workflow, "status": "PAUSED", "expectedVersion": 2}),
        EventType::ApprovalRequested => json!({
            "workflowId": workflow, "title": "Order 4711", "amount": 250.0, "currency": "EUR",
            "requesterId": "0190f7a2-7d00-7000-8000-000000000001", "details": {"costCenter": "R&D-7"}
        }),
        EventType::ApprovalDecided => json!({"approvalId": approval, "status": "APPROVED", "reason": "Within budget"}),
        EventType::ApprovalEscalate => json!({"approvalId": approval, "toRole": "admin", "reason": "Open for 48 h"}),
        EventType::AuditRecorded => {
            json!({"entity": "invoice", "entityId": "INV-2026-0042", "action": "exported", "details": {"format": "pdf"}})
        }
        EventType::RuleUpserted => json!({
            "name": "Small purchases are approved", "on": "approval.requested", "when": "event.data.amount < 100.0",
            "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "under 100"}], "priority": 10
        }),
        EventType::RuleDeleted => json!({"ruleId": "0190f7a2-8e00-7000-8000-000000000001"}),
        EventType::AutomationRequested => json!({
            "automation": "webhook.call", "params": {"url": "https://hooks.example.com/approvals"}, "countdownSeconds": 60
        }),
        EventType::AutomationCancelled => json!({"runId": "0190f7a2-9f00-7000-8000-000000000c01"}),
    }
}

/// An example event of each type, as a Spring service would publish it.
pub fn example_event(event_type: EventType) -> Value {
    json!({
        "specversion": "1.0", "id": format!("orders-4711-{event_type}"), "source": "/spring/orders",
        "type": event_type.as_str(), "time": "2026-03-01T09:30:00Z", "datacontenttype": "application/json",
        "data": example_data(event_type)
    })
}

/// The schema of one event type, as a structured CloudEvent whose `data` is that type's data
/// (`$defs/<Type>Data`, which binary and plain messages carry as their whole body).
pub fn event_schema(event_type: EventType) -> Value {
    let mut data = data_schema(event_type);
    let mut defs = data.as_object_mut().and_then(|o| o.remove("$defs")).unwrap_or_else(|| json!({}));
    let data_name = data_name(event_type);
    if let Some(o) = data.as_object_mut() {
        o.insert("title".into(), json!(data_name));
        o.insert("description".into(), json!(format!("The `data` of `{event_type}`.")));
    }
    defs[&data_name] = data;
    // A generator names a class after its title; without one it takes the property name
    // (`status` → `PurpleStatus`).
    for (name, def) in defs.as_object_mut().into_iter().flatten() {
        if let Some(def) = def.as_object_mut() {
            def.entry("title").or_insert_with(|| json!(name));
        }
    }
    let mut properties = attributes(json!({"type": "string", "const": event_type.as_str()}));
    properties.insert("data".into(), json!({"$ref": format!("#/$defs/{data_name}")}));
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": format!("{SCHEMA_BASE}/events/{event_type}.json"),
        "title": format!("{}Event", type_name(event_type.as_str())),
        "description": format!(
            "A `{event_type}` event as a CloudEvents 1.0 structured message. In binary mode the \
             attributes travel as `ce_` headers and the body is `{data_name}`; as plain JSON the body is \
             `{data_name}` and the routing key (or the AMQP `type` property) is the type. Optional \
             attributes may be absent or null."
        ),
        "type": "object",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": properties,
        "examples": [example_event(event_type)],
        "$defs": defs
    })
}

/// A utoipa (OpenAPI 3.1) schema as JSON, and the schemas it refers to: the entities the
/// notifications carry are serialised from the same types the REST API returns.
fn openapi_schema<T: utoipa::ToSchema>(schemas: &mut Map<String, Value>) -> Value {
    let mut referred: Vec<(String, RefOr<OpenApiSchema>)> = Vec::new();
    T::schemas(&mut referred);
    for (name, schema) in referred {
        let mut value = serde_json::to_value(schema).unwrap_or_default();
        for_generators(&mut value);
        value["title"] = json!(name);
        schemas.insert(name, value);
    }
    let mut value = serde_json::to_value(T::schema()).unwrap_or_default();
    for_generators(&mut value);
    value
}

/// The schema of `T` with every subschema inlined (no `$defs`), as generators want it: for a
/// document that registers it under a name of its own (the OpenAPI document's rule bodies).
pub fn inlined<T: JsonSchema>() -> Value {
    let mut value = SchemaSettings::draft2020_12()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    for_generators(&mut value);
    if let Some(o) = value.as_object_mut() {
        o.remove("$schema");
    }
    value
}

/// The `data` schema of each notification, registered under `components.schemas`.
fn notification_data(kind: NotificationType, schemas: &mut Map<String, Value>) -> Value {
    use NotificationType::*;
    fn named(schemas: &mut Map<String, Value>, name: &str, mut schema: Value) -> Value {
        schema["title"] = json!(name);
        schemas.entry(name.to_string()).or_insert(schema);
        json!({"$ref": format!("#/components/schemas/{name}")})
    }
    match kind {
        WorkflowCreated | WorkflowStatusChanged => {
            let workflow = openapi_schema::<Workflow>(schemas);
            named(schemas, "Workflow", workflow)
        }
        ApprovalCreated | ApprovalApproved | ApprovalRejected | ApprovalEscalated => {
            let approval = openapi_schema::<Approval>(schemas);
            named(schemas, "Approval", approval)
        }
        AutomationQueued | AutomationScheduled | AutomationSucceeded | AutomationFailed | AutomationCancelled => {
            let run = openapi_schema::<Run>(schemas);
            named(schemas, "AutomationRun", run)
        }
        RuleChanged => {
            let rule = openapi_schema::<Rule>(schemas);
            named(schemas, "Rule", rule);
            named(
                schemas,
                "RuleChange",
                json!({
                    "description": "The rule as stored now with `change` (`created` or `updated`), or for `deleted` its id, name and last version.",
                    "oneOf": [
                        {"allOf": [
                            {"$ref": "#/components/schemas/Rule"},
                            {"type": "object", "required": ["change"], "properties": {"change": {"type": "string", "enum": ["created", "updated"]}}}
                        ]},
                        {"type": "object", "required": ["id", "name", "version", "change"], "properties": {
                            "id": {"type": "string", "format": "uuid"},
                            "name": {"type": "string"},
                            "version": {"type": "integer", "format": "int64", "minimum": 0},
                            "change": {"type": "string", "const": "deleted"}
                        }}
                    ]
                }),
            )
        }
        AuditRecorded => named(schemas, "AuditNotice", inlined::<super::AuditNotice>()),
        RuleFired => named(schemas, "RuleFired", inlined::<super::RuleFired>()),
        EventRejected => named(schemas, "EventRejected", inlined::<super::EventRejected>()),
    }
}

/// The envelope of a notification of `kind`, with its typed `data`.
fn notification_schema(kind: NotificationType, data: Value) -> Value {
    let mut properties = attributes(json!({"type": "string", "const": kind.as_str()}));
    properties.insert("source".into(), json!({"type": "string", "const": WORKER_SOURCE}));
    properties.insert(
        "id".into(),
        json!({"type": "string", "description": "Stable per notification: a republish after a crash carries the same id."}),
    );
    properties.insert(
        "causationid".into(),
        json!({"type": "string", "description": "The id of the event that caused this notification."}),
    );
    properties.insert("data".into(), data);
    json!({
        "title": format!("{}Notification", type_name(kind.as_str())),
        "description": format!("`{kind}`: {}.", kind.summary()),
        "type": "object",
        "required": ["specversion", "id", "source", "type", "causationid", "data"],
        "properties": properties
    })
}

/// The `ce_` headers of a binary-mode message of `event_type`.
fn binary_headers(event_type: EventType) -> Value {
    let header = |description: &str| json!({"type": "string", "description": description});
    json!({
        "type": "object",
        "description": "CloudEvents attributes as AMQP headers. `ce-`, `cloudEvents:` and `cloudEvents_` prefixes are read too; extensions are `ce_<name>`.",
        "required": ["ce_specversion", "ce_id", "ce_type"],
        "properties": {
            "ce_specversion": {"type": "string", "const": "1.0"},
            "ce_id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Unique per event and source."},
            "ce_source": header("Who sent it; `unknown` when left out."),
            "ce_type": {"type": "string", "const": event_type.as_str()},
            "ce_time": {"type": "string", "format": "date-time", "description": "RFC 3339."},
            "ce_subject": header("What the event is about."),
            "ce_actorid": header("Who asked for this."),
            "ce_correlationid": header("Carried through to every notification."),
            "ce_traceparent": header("W3C trace context."),
            "ce_tracestate": header("W3C trace context: vendor state that goes with `ce_traceparent`.")
        }
    })
}

/// The AsyncAPI 3.0 document of the exchanges, routing keys and messages, from the point of
/// view of automation-engine: it receives events and sends notifications.
pub fn asyncapi(prefix: &str) -> Value {
    let events_exchange = format!("{prefix}.events");
    let exchange = |name: &str| json!({"amqp": {"is": "routingKey", "exchange": {"name": name, "type": "topic", "durable": true, "autoDelete": false, "vhost": "/"}, "bindingVersion": "0.3.0"}});
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for event_type in EventType::ALL {
        let name = type_name(event_type.as_str());
        let file = format!("./events/{event_type}.json");
        let data = json!({"$ref": format!("{file}#/$defs/{}", data_name(*event_type))});
        let who = if event_type.sent_from_outside() {
            "Publish it with the routing key `{type}`."
        } else {
            "Internal: sent by automation-engine itself (rules, tasks); refused from any other publisher."
        }
        .replace("{type}", event_type.as_str());
        let shapes = [
            ("", "structured", json!({"$ref": file}), None),
            ("Binary", "binary", data.clone(), Some(binary_headers(*event_type))),
            ("Plain", "plain", data, None),
        ];
        let mut channel_messages = Map::new();
        for (suffix, trait_name, payload, headers) in shapes {
            let id = format!("{name}{suffix}");
            let mut message = json!({
                "name": id,
                "title": format!("{event_type} ({trait_name})"),
                "summary": format!("Asks automation-engine to apply `{event_type}`. {who}"),
                "payload": payload,
                "traits": [{"$ref": format!("#/components/messageTraits/{trait_name}")}]
            });
            if let Some(headers) = headers {
                message["headers"] = headers;
            }
            if trait_name == "plain" {
                message["bindings"] = json!({"amqp": {"messageType": event_type.as_str(), "bindingVersion": "0.3.0"}});
            }
            messages.insert(id.clone(), message);
            channel_messages.insert(id.clone(), json!({"$ref": format!("#/components/messages/{id}")}));
        }
        let channel = format!("events{name}");
        channels.insert(
            channel.clone(),
            json!({
                "address": event_type.as_str(),
                "title": format!("{events_exchange} {event_type}"),
                "description": format!(
                    "`{event_type}` on the topic exchange `{events_exchange}` (routing key = type); the worker takes it from `{prefix}.{}`.",
                    event_type.queue().suffix()
                ),
                "servers": [{"$ref": "#/servers/production"}, {"$ref": "#/servers/local"}],
                "messages": channel_messages,
                "bindings": exchange(&events_exchange)
            }),
        );
        let operation_messages: Vec<Value> = ["", "Binary", "Plain"]
            .iter()
            .map(|suffix| json!({"$ref": format!("#/channels/{channel}/messages/{name}{suffix}")}))
            .collect();
        operations.insert(
            format!("receive{name}"),
            json!({
                "action": "receive",
                "title": format!("Apply {event_type}"),
                "summary": format!("The worker applies `{event_type}` once (a redelivery is skipped) and announces the outcome on `{prefix}.notifications`."),
                "channel": {"$ref": format!("#/channels/{channel}")},
                "messages": operation_messages
            }),
        );
    }
    let mut notification_messages = Map::new();
    let mut notification_refs = Vec::new();
    for kind in NotificationType::ALL {
        let name = format!("{}Notification", type_name(kind.as_str()));
        let data = notification_data(*kind, &mut schemas);
        schemas.insert(name.clone(), notification_schema(*kind, data));
        messages.insert(
            name.clone(),
            json!({
                "name": name,
                "title": kind.as_str(),
                "summary": kind.summary(),
                "contentType": "application/cloudevents+json",
                "payload": {"$ref": format!("#/components/schemas/{name}")},
                "traits": [{"$ref": "#/components/messageTraits/structured"}],
                "bindings": {"amqp": {"messageType": kind.as_str(), "bindingVersion": "0.3.0"}}
            }),
        );
        notification_messages.insert(name.clone(), json!({"$ref": format!("#/components/messages/{name}")}));
        notification_refs.push(json!({"$ref": format!("#/channels/notifications/messages/{name}")}));
    }
    channels.insert(
        "notifications".into(),
        json!({
            "address": "{notificationType}",
            "title": format!("{prefix}.notifications"),
            "description": format!("The topic exchange `{prefix}.notifications`: what the system did, routing key = notification type. Exactly one notification per applied or refused event; `causationid` is the id of that event. Bind a queue of yours with e.g. `approval.*`."),
            "parameters": {"notificationType": {
                "description": "The notification type, which is the routing key.",
                "enum": NotificationType::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>()
            }},
            "servers": [{"$ref": "#/servers/production"}, {"$ref": "#/servers/local"}],
            "messages": notification_messages,
            "bindings": exchange(&format!("{prefix}.notifications"))
        }),
    );
    messages.insert(
        "DeadLetter".into(),
        json!({
            "name": "DeadLetter",
            "title": "A dead letter",
            "summary": "A message that could not be taken (not JSON, unknown type, invalid data, too large, a type its publisher may not send) or ran out of attempts; the body is the original.",
            "headers": {
                "type": "object",
                "properties": {
                    "x-dead-reason": {"type": "string", "description": "Why, e.g. `schema_invalid: data.amount: lower than 0`."},
                    "x-error-kind": {"type": "string", "enum": ["poison", "exhausted", "delivery_limit"]},
                    "x-origin-queue": {"type": "string", "description": "The work queue it died in."},
                    "x-original-routing-key": {"type": "string"},
                    "x-event-id": {"type": "string"},
                    "x-event-type": {"type": "string"},
                    "x-dead-letter-id": {"type": "string", "format": "uuid"},
                    "x-dead-at": {"type": "string", "format": "date-time"},
                    "x-history": {"type": "string", "description": "JSON array of the failed attempts, oldest first (the last ten)."}
                }
            },
            "payload": {"description": "The original body, as it was published."}
        }),
    );
    channels.insert(
        "deadLetters".into(),
        json!({
            "address": "#",
            "title": format!("{prefix}.dead"),
            "description": format!("The topic exchange `{prefix}.dead`: every dead letter, kept whole in the dead-letter store (`automation-worker dlq`, `/api/v1/admin/dead-letters`)."),
            "servers": [{"$ref": "#/servers/production"}, {"$ref": "#/servers/local"}],
            "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
            "bindings": exchange(&format!("{prefix}.dead"))
        }),
    );
    operations.insert(
        "sendNotification".into(),
        json!({
            "action": "send",
            "title": "Announce what was done",
            "summary": "After each applied or refused event, its notification (from the outbox, after commit, with publisher confirms).",
            "channel": {"$ref": "#/channels/notifications"},
            "messages": notification_refs
        }),
    );
    operations.insert(
        "sendDeadLetter".into(),
        json!({
            "action": "send",
            "title": "Dead-letter a message",
            "summary": "A message that cannot be taken is dead-lettered at once with its reason; one that keeps failing, after its attempts.",
            "channel": {"$ref": "#/channels/deadLetters"},
            "messages": [{"$ref": "#/channels/deadLetters/messages/DeadLetter"}]
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "automation-engine",
            "version": "1.0.0",
            "description": format!(
                "Events in, notifications out, as seen by automation-engine: it receives the events on \
                 `{prefix}.events` and sends notifications on `{prefix}.notifications` and dead letters on \
                 `{prefix}.dead` (a publisher sends what automation-engine receives). Every event comes in three \
                 shapes (traits): CloudEvents structured, CloudEvents binary (`ce_` headers), plain Jackson JSON. \
                 Exchange and queue names start with the configured prefix (here the default)."
            ),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "production": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The broker of a deployment (vhost `/`); publishers authenticate as their own AMQP user."
            },
            "local": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "`make run` on this machine (guest/guest)."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
            "messageTraits": {
                "structured": {
                    "name": "structured",
                    "title": "CloudEvents structured",
                    "summary": "The body is the whole CloudEvent (attributes and `data`).",
                    "contentType": "application/cloudevents+json"
                },
                "binary": {
                    "name": "binary",
                    "title": "CloudEvents binary",
                    "summary": "The body is `data`; the attributes are `ce_` headers (`ce_specversion`, `ce_id`, `ce_source`, `ce_type`, ...).",
                    "contentType": "application/json"
                },
                "plain": {
                    "name": "plain",
                    "title": "Plain JSON (Spring RabbitTemplate with Jackson)",
                    "summary": "The body is `data`. The type is the AMQP `type` property, else the routing key; the id is `message_id`, else a hash of routing key and body. `__TypeId__` is ignored.",
                    "contentType": "application/json",
                    "headers": {
                        "type": "object",
                        "properties": {"__TypeId__": {"type": "string", "description": "Set by Jackson2JsonMessageConverter; ignored."}}
                    }
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
            let message = &messages[format!("{}Notification", type_name(kind.as_str()))];
            assert_eq!(message["title"], kind.as_str());
            assert_eq!(message["summary"], kind.summary());
        }
        let rejected = &doc["components"]["schemas"]["EventRejected"];
        let codes: Vec<&str> = rejected["properties"]["code"]["oneOf"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["const"].as_str())
            .collect();
        let expected: Vec<&str> = crate::events::RejectCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes, expected);
    }

    #[test]
    fn every_schema_example_is_an_event_the_worker_takes() {
        use crate::events::envelope::{Envelope, Limits};
        use crate::messaging::SystemUsers;
        use lapin::BasicProperties;
        use lapin::types::ShortString;
        let system = SystemUsers::new("automation", &[]);
        let publishers = std::collections::BTreeMap::new();
        let limits = Limits { max_bytes: 256 * 1024, publishers: &publishers, system: &system };
        for event_type in EventType::ALL {
            let example = &event_schema(*event_type)["examples"][0];
            // Internal types are taken only from the system.
            let user = if event_type.sent_from_outside() { "orders" } else { "automation" };
            let properties = BasicProperties::default()
                .with_content_type(ShortString::from("application/cloudevents+json"))
                .with_user_id(ShortString::from(user));
            let body = serde_json::to_vec(example).expect("json");
            let envelope = Envelope::parse(event_type.as_str(), &properties, &body, limits)
                .unwrap_or_else(|poison| panic!("{event_type}: {poison}"));
            assert_eq!(envelope.event_type, *event_type);
        }
    }

    #[test]
    fn the_schema_carries_the_validation_constraints() {
        let schema = event_schema(EventType::ApprovalRequested);
        let data = &schema["$defs"]["ApprovalRequestedData"];
        assert_eq!(schema["properties"]["data"]["$ref"], "#/$defs/ApprovalRequestedData");
        assert_eq!(data["title"], "ApprovalRequestedData");
        assert_eq!(data["properties"]["title"]["minLength"], 1);
        assert_eq!(data["properties"]["title"]["maxLength"], 300);
        assert_eq!(data["properties"]["currency"]["pattern"], "^[A-Z]{3}$");
    }
}
