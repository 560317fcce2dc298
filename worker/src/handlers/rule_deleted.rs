//! `rule.deleted`: removes a rule; its past evaluations stay with the events they ran on.

use automation_shared::events::{NotificationType, RejectCode, RuleDeleted};
use serde_json::json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = RuleDeleted;
    /// A delete of a rule that is not there is refused at once: waiting would let an upsert sent
    /// after it pass it, and leave no rule where the publisher's order says there is one.
    const WAITS: bool = false;

    /// Ordered with the rule's upserts.
    fn key(_event_id: &str, data: &RuleDeleted) -> EntityKey {
        EntityKey::new("rule", data.rule_id)
    }

    fn needs(_event_id: &str, data: &RuleDeleted, needs: &mut Needs) {
        needs.rule(data.rule_id);
    }

    fn handle(ctx: &mut Context<'_>, data: &RuleDeleted) -> Result<Applied, Rejection> {
        let Some(rule) = ctx.entities.rules.get(data.rule_id).cloned() else {
            return Err(reject(RejectCode::NotFound, format!("rule {} does not exist", data.rule_id)));
        };
        ctx.entities.rules.remove(rule.id);
        let state = json!({"id": rule.id, "name": rule.name, "version": rule.version, "change": "deleted"});
        let mut applied = Applied::new("rule", rule.id, NotificationType::RuleChanged, &state);
        applied.audit_action = "rule.deleted".into();
        applied.audit_details = Some(json!({"version": rule.version, "name": rule.name}));
        Ok(applied)
    }
}
