//! What the worker announces about what it did: notifications on the notifications exchange,
//! built here and written to the outbox in the same transaction as the effect.

use automation_shared::db::events::{Destination, OutboxMessage};
use automation_shared::events::{CloudEvent, Envelope, derived_id, extension};
use serde_json::{Value, json};

/// The `source` of every notification.
pub const SOURCE: &str = "/automation-engine/worker";

/// A notification caused by `cause`. Its id is derived from the cause and the kind, so if it is
/// ever published twice (a crash between the broker's confirm and the outbox delete), consumers
/// see the same id twice and can drop the copy.
pub fn notification(cause: &Envelope, kind: &str, data: Value) -> OutboxMessage {
    let id = derived_id(&format!("notification:{kind}"), &cause.id);
    let event = CloudEvent::new(id.to_string(), SOURCE, kind, data)
        .with_extension(extension::CAUSATION_ID, cause.id.clone())
        .with_extension(extension::CORRELATION_ID, cause.correlation_id.clone())
        .with_optional_extension(extension::TRACEPARENT, cause.traceparent.clone());
    OutboxMessage {
        message_id: id,
        destination: Destination::Notifications,
        routing_key: kind.to_string(),
        body: serde_json::to_vec(&event).unwrap_or_default(),
    }
}

/// `event.rejected` for a refused event: `data` is `{eventId, type, reason, code}`.
pub fn rejection(cause: &Envelope, code: &str, reason: &str) -> OutboxMessage {
    notification(
        cause,
        "event.rejected",
        json!({"eventId": cause.id, "type": cause.event_type.as_str(), "reason": reason, "code": code}),
    )
}
