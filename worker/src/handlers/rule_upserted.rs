//! `rule.upserted`: stores a rule after compiling its condition; an invalid rule is refused with
//! the compiler's message.

use automation_shared::db::rules::Rule;
use automation_shared::events::{NotificationType, RejectCode, derived_id};
use automation_shared::rules::RuleDefinition;
use serde_json::json;
use sqlx::types::Json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = RuleDefinition;
    const CREATES: bool = true;

    /// The rule it creates or replaces.
    fn key(event_id: &str, data: &RuleDefinition) -> EntityKey {
        EntityKey::new("rule", data.id.unwrap_or_else(|| derived_id("rule", event_id)))
    }

    fn needs(event_id: &str, data: &RuleDefinition, needs: &mut Needs) {
        needs.rule(data.id.unwrap_or_else(|| derived_id("rule", event_id)));
    }

    fn handle(ctx: &mut Context<'_>, data: &RuleDefinition) -> Result<Applied, Rejection> {
        data.check().map_err(|message| reject(RejectCode::InvalidRule, message))?;
        let id = data.id.unwrap_or_else(|| derived_id("rule", &ctx.envelope.scoped_id()));
        let existing = ctx.entities.rules.get(id).cloned();
        let rule = Rule {
            seq: 0,
            id,
            name: data.name.clone(),
            description: data.description.clone(),
            enabled: data.enabled,
            priority: data.priority,
            on: data.on.clone(),
            when: data.when.clone(),
            then: Json(data.then.clone()),
            stop_on_match: data.stop_on_match,
            version: existing.as_ref().map_or(1, |r| r.version + 1),
            created_by: existing.as_ref().map_or_else(|| ctx.actor(), |r| r.created_by.clone()),
            created_at: existing.as_ref().map_or(ctx.now, |r| r.created_at),
            updated_at: ctx.now,
        };
        let mut state = serde_json::to_value(&rule).unwrap_or_default();
        state["change"] = json!(if existing.is_some() { "updated" } else { "created" });
        let mut applied = Applied::new("rule", id, NotificationType::RuleChanged, &state);
        applied.audit_action = "rule.upserted".into();
        applied.audit_details = Some(json!({"version": rule.version, "name": rule.name}));
        match ctx.entities.rules.get_mut(id) {
            Some(stored) => *stored = rule,
            None => ctx.entities.rules.insert(id, rule),
        }
        Ok(applied)
    }
}
