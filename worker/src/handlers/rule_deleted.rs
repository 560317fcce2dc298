//! `rule.deleted`: removes a rule; its past evaluations stay with the events they ran on.

use automation_shared::db::rules;
use automation_shared::events::RuleDeleted;
use serde_json::json;

use super::{Applied, Context, HandlerError, RejectCode, reject};

pub async fn handle(ctx: &mut Context<'_>, data: &RuleDeleted) -> Result<Applied, HandlerError> {
    let Some(rule) = rules::find_for_update(&mut *ctx.conn, data.rule_id).await? else {
        return Err(reject(
            RejectCode::NotFound,
            format!("rule {} does not exist", data.rule_id),
        ));
    };
    rules::delete(&mut *ctx.conn, rule.id).await?;
    let state =
        json!({"id": rule.id, "name": rule.name, "version": rule.version, "change": "deleted"});
    let mut applied = Applied::new("rule", rule.id, "rule.changed", &state);
    applied.audit_action = "rule.deleted".into();
    applied.audit_details = Some(json!({"version": rule.version, "name": rule.name}));
    Ok(applied)
}
