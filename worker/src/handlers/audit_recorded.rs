//! `audit.recorded`: an audit record asked for by a client. The record itself is the effect.

use automation_shared::events::{AuditNotice, AuditRecorded, NotificationType};
use serde_json::Value;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection};

pub struct Handler;

impl EventHandler for Handler {
    type Data = AuditRecorded;

    /// The entity it records something about: ordered with that entity's own events.
    fn key(_event_id: &str, data: &AuditRecorded) -> EntityKey {
        EntityKey::named(&data.entity, &data.entity_id)
    }

    fn needs(_event_id: &str, _data: &AuditRecorded, _needs: &mut Needs) {}

    fn handle(ctx: &mut Context<'_>, data: &AuditRecorded) -> Result<Applied, Rejection> {
        #[cfg(feature = "fault-injection")]
        if data.action == crate::faults::PANIC_ACTION {
            panic!("fault injection: a handler panic was asked for");
        }
        let state = AuditNotice {
            entity: data.entity.clone(),
            entity_id: data.entity_id.clone(),
            action: data.action.clone(),
            actor_id: ctx.actor(),
            details: data.details.clone(),
            event_id: ctx.envelope.id.clone(),
        };
        let mut applied = Applied::new(&data.entity, &data.entity_id, NotificationType::AuditRecorded, &state);
        applied.audit_action = data.action.clone();
        applied.audit_details = data.details.clone().map(Value::Object);
        Ok(applied)
    }
}
