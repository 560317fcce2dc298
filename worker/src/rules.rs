//! Rules in the batch: the enabled rules (reloaded when the table changes), evaluated after each
//! applied event whose type matches. Each matching rule's actions become follow-up events in the
//! outbox of the same transaction, so they are audited, idempotent and retried like any other; a
//! chain of them is refused past depth 8 where it is applied.

use automation_shared::db::audit::ActorType;
use automation_shared::db::events::OutboxMessage;
use automation_shared::db::rules as rule_rows;
use automation_shared::events::{Envelope, EventType, derived_id};
use automation_shared::rules::RuleAction;
use automation_shared::rules::engine::{self, ConditionCache, Evaluation, StoredRule};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::MySqlConnection;
use uuid::Uuid;

use crate::announce::{self, Actor, Cause};
use crate::handlers::Applied;

/// What the rules table looked like when the rules were loaded.
type Fingerprint = (Option<DateTime<Utc>>, i64, i64);

/// The enabled rules and their compiled conditions, per consumer.
#[derive(Debug, Default)]
pub struct RuleSet {
    fingerprint: Option<Fingerprint>,
    rules: Vec<StoredRule>,
    conditions: ConditionCache,
}

/// What the rules made of one applied event.
#[derive(Debug, Default)]
pub struct Fired {
    /// Every evaluation, kept with the event and shown in its status.
    pub evaluations: Vec<Evaluation>,
    /// Follow-up events and `rule.fired` notifications.
    pub outbox: Vec<OutboxMessage>,
    /// The rules that matched, for their audit records.
    pub matched: Vec<(Uuid, Value)>,
}

impl RuleSet {
    /// Reloads the rules if they changed since the last batch (one cheap query per batch, so a
    /// rule applies to every event processed after its change committed).
    pub async fn refresh(&mut self, conn: &mut MySqlConnection) -> sqlx::Result<()> {
        let fingerprint = rule_rows::fingerprint(&mut *conn).await?;
        if self.fingerprint != Some(fingerprint) {
            self.rules = rule_rows::enabled(&mut *conn).await?;
            self.fingerprint = Some(fingerprint);
        }
        Ok(())
    }

    pub fn evaluate(&self, envelope: &Envelope, applied: &Applied) -> Fired {
        let mut fired = Fired::default();
        if !self
            .rules
            .iter()
            .any(|r| automation_shared::rules::pattern_matches(&r.definition.on, envelope.event_type.as_str()))
        {
            return fired;
        }
        let event = serde_json::to_value(envelope.to_cloud_event()).unwrap_or(Value::Null);
        let (mut evaluations, actions) =
            engine::evaluate(&self.conditions, &self.rules, envelope.event_type.as_str(), &event, &applied.state);
        let cause = Cause::from(envelope);
        let mut index_in_rule: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
        let mut described: std::collections::HashMap<Uuid, Vec<String>> = std::collections::HashMap::new();
        for (rule_id, action) in actions {
            let index = index_in_rule.entry(rule_id).or_default();
            let description = match plan(&action, applied) {
                Ok((event_type, data)) => {
                    let id = derived_id(&format!("rule:{rule_id}:{index}"), &envelope.id).to_string();
                    let actor = Actor {
                        id: rule_id.to_string(),
                        actor_type: ActorType::Rule,
                        source: "/automation-engine/rules",
                    };
                    fired.outbox.push(announce::follow_up(&cause, &id, event_type, data, &actor));
                    format!("{} → {event_type} {id}", action.kind())
                }
                Err(why) => format!("{} skipped: {why}", action.kind()),
            };
            *index += 1;
            described.entry(rule_id).or_default().push(description);
        }
        for evaluation in evaluations.iter_mut().filter(|e| e.matched) {
            evaluation.actions = described.remove(&evaluation.rule_id).unwrap_or_default();
            let data = json!({
                "ruleId": evaluation.rule_id, "ruleName": evaluation.rule_name, "version": evaluation.version,
                "eventId": envelope.id, "eventType": envelope.event_type.as_str(), "actions": evaluation.actions,
            });
            let id = derived_id(&format!("rule-fired:{}", evaluation.rule_id), &envelope.id);
            fired.outbox.push(announce::notification_with_id(id, &cause, "rule.fired", data.clone()));
            fired.matched.push((evaluation.rule_id, data));
        }
        fired.evaluations = evaluations;
        fired
    }
}

/// The event an action asks for, given what the triggering event changed.
fn plan(action: &RuleAction, applied: &Applied) -> Result<(EventType, Value), String> {
    let approval = || {
        (applied.entity == "approval")
            .then(|| applied.entity_id.clone())
            .ok_or_else(|| "the event is not about an approval".to_string())
    };
    Ok(match action {
        RuleAction::ApprovalDecide { status, reason } => {
            (EventType::ApprovalDecided, json!({"approvalId": approval()?, "status": status, "reason": reason}))
        }
        RuleAction::ApprovalEscalate { to_role, to_user, reason } => (
            EventType::ApprovalEscalate,
            json!({"approvalId": approval()?, "toRole": to_role, "toUser": to_user, "reason": reason}),
        ),
        RuleAction::WorkflowSetStatus { status } => {
            let workflow = match applied.entity.as_str() {
                "workflow" => applied.entity_id.clone(),
                "approval" => applied.state["workflowId"].as_str().unwrap_or_default().to_string(),
                _ => return Err("the event is about neither a workflow nor an approval".into()),
            };
            (EventType::WorkflowStatusChanged, json!({"workflowId": workflow, "status": status}))
        }
        RuleAction::AutomationRun { automation, params, countdown_seconds } => (
            EventType::AutomationRequested,
            json!({"automation": automation, "params": params, "countdownSeconds": countdown_seconds}),
        ),
        RuleAction::AuditNote { action, details } => (
            EventType::AuditRecorded,
            json!({"entity": applied.entity, "entityId": applied.entity_id, "action": action, "details": details}),
        ),
    })
    .map(|(t, data)| (t, strip_nulls(data)))
}

fn strip_nulls(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    value
}
