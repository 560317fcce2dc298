//! What the worker publishes about what it did, built here and written to the outbox in the same
//! transaction as the effect: notifications on the notifications exchange, and follow-up events
//! (rule actions, a task's requests) on the events exchange.

use automation_shared::db::audit::ActorType;
use automation_shared::db::events::{Destination, OutboxMessage};
use automation_shared::events::{
    CloudEvent, Envelope, EventRejected, EventType, NotificationType, RejectCode, derived_id, extension,
};
use serde_json::Value;
use uuid::Uuid;

/// The `source` of every notification.
pub const SOURCE: &str = "/automation-engine/worker";

/// What caused a message: its id, correlation, trace, and how deep in a rule chain it is.
#[derive(Debug, Clone)]
pub struct Cause {
    pub id: String,
    /// What the ids of its notifications are derived from: [`Envelope::scoped_id`].
    pub scoped_id: String,
    pub correlation_id: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub chain_depth: u32,
    /// The API reply queue its notifications are copied to (a request there waits for it).
    pub reply_to: Option<String>,
}

impl From<&Envelope> for Cause {
    fn from(envelope: &Envelope) -> Cause {
        Cause {
            id: envelope.id.clone(),
            scoped_id: envelope.scoped_id().into_owned(),
            correlation_id: envelope.correlation_id.clone(),
            traceparent: envelope.traceparent.clone(),
            tracestate: envelope.tracestate.clone(),
            chain_depth: envelope.chain_depth,
            reply_to: envelope.reply_to.clone(),
        }
    }
}

/// A notification caused by `cause`. Its id is derived from the cause and the kind, so if it is
/// ever published twice (a crash between the broker's confirm and the outbox delete), consumers
/// see the same id twice and can drop the copy.
pub fn notification(cause: &Cause, kind: NotificationType, data: Value) -> OutboxMessage {
    notification_with_id(derived_id(&format!("notification:{kind}"), &cause.scoped_id), cause, kind, data)
}

/// A notification with an id of the caller's choosing (one cause may announce several of a kind,
/// e.g. the attempts of a run).
pub fn notification_with_id(id: Uuid, cause: &Cause, kind: NotificationType, data: Value) -> OutboxMessage {
    let event = CloudEvent::new(id.to_string(), SOURCE, kind.as_str(), data)
        .with_extension(extension::CAUSATION_ID, cause.id.clone())
        .with_extension(extension::CORRELATION_ID, cause.correlation_id.clone())
        .with_optional_extension(extension::TRACEPARENT, cause.traceparent.clone())
        .with_optional_extension(extension::TRACESTATE, cause.tracestate.clone());
    OutboxMessage {
        message_id: id,
        destination: Destination::Notifications,
        routing_key: kind.as_str().to_string(),
        body: serde_json::to_vec(&event).unwrap_or_default(),
        reply_to: cause.reply_to.clone(),
    }
}

/// `event.rejected` for a refused event: `data` is `{eventId, type, reason, code}`.
pub fn rejection(cause: &Envelope, code: RejectCode, reason: &str) -> OutboxMessage {
    let data = EventRejected {
        event_id: cause.id.clone(),
        event_type: cause.event_type.as_str().to_string(),
        reason: reason.to_string(),
        code,
    };
    notification(&Cause::from(cause), NotificationType::EventRejected, serde_json::to_value(data).unwrap_or_default())
}

/// Who a follow-up event is from.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub actor_type: ActorType,
    pub source: &'static str,
}

/// A follow-up event: an inbound event published through the outbox, applied (or refused) by a
/// worker like any other, one level deeper in its chain. `id` should be derived from the cause,
/// so the same cause always asks for the same event.
pub fn follow_up(cause: &Cause, id: &str, event_type: EventType, data: Value, actor: &Actor) -> OutboxMessage {
    let event = CloudEvent::new(id, actor.source, event_type.as_str(), data)
        .with_extension(extension::ACTOR_ID, actor.id.clone())
        .with_extension(extension::ACTOR_TYPE, actor.actor_type.as_str())
        .with_extension(extension::CAUSATION_ID, cause.id.clone())
        .with_extension(extension::CORRELATION_ID, cause.correlation_id.clone())
        .with_extension(extension::CHAIN_DEPTH, cause.chain_depth + 1)
        .with_optional_extension(extension::TRACEPARENT, cause.traceparent.clone())
        .with_optional_extension(extension::TRACESTATE, cause.tracestate.clone());
    OutboxMessage {
        message_id: derived_id("follow-up", id),
        destination: Destination::Events,
        routing_key: event_type.as_str().to_string(),
        body: serde_json::to_vec(&event).unwrap_or_default(),
        reply_to: None,
    }
}
