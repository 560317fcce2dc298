//! Business rules (CONTRACT §6): the rule model, its validation and CEL compilation.
//!
//! A rule is data: `on` (an event-type pattern), `when` (a CEL condition over `event` and
//! `entity`) and `then` (actions that become follow-up events). The engine that evaluates them
//! lives in [`engine`].

pub mod engine;

use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use serde_json::json;

use crate::events::EventType;
use crate::lifecycle::{Decision, WorkflowStatus};

/// Longest accepted `when` expression: keeps compilation and evaluation cost bounded.
pub const MAX_CONDITION_CHARS: usize = 4096;
/// Deepest nesting of comprehension macros (`all`, `exists`, `map`, `filter`) in a condition:
/// two levels keep evaluation at most quadratic in the size of the event.
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// A rule as clients send it (`rule.upserted`, `POST /api/v1/rules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(rename_all = "camelCase")]
pub struct RuleDefinition {
    /// Derived from the event id when left out.
    #[garde(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[garde(length(chars, min = 1, max = 200))]
    pub name: String,
    #[garde(length(chars, max = 4000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `true` when absent or null.
    #[garde(skip)]
    #[serde(default = "enabled_by_default", deserialize_with = "null_is_enabled")]
    #[schemars(with = "Option<bool>")]
    pub enabled: bool,
    /// Rules run in ascending priority: 1 runs before 10. Ties run in id order.
    #[garde(range(min = -1_000_000, max = 1_000_000))]
    #[serde(default = "default_priority", deserialize_with = "null_is_default_priority")]
    #[schemars(with = "Option<i32>", range(min = -1_000_000, max = 1_000_000))]
    pub priority: i32,
    /// An event type (`approval.requested`) or a pattern with a trailing `*` (`approval.*`).
    #[garde(length(min = 1, max = 128), pattern(r"^(\*|[a-z_]+(\.([a-z_]+|\*))*)$"))]
    pub on: String,
    /// A CEL expression over `event` and `entity` that yields a bool.
    #[garde(length(chars, min = 1, max = 4096))]
    pub when: String,
    #[garde(length(min = 1, max = 16), dive)]
    pub then: Vec<RuleAction>,
    /// Skip the rules after this one when it matches.
    #[garde(skip)]
    #[serde(default, deserialize_with = "null_is_false")]
    #[schemars(with = "Option<bool>")]
    pub stop_on_match: bool,
}

fn enabled_by_default() -> bool {
    true
}

fn default_priority() -> i32 {
    100
}

// A member with a default may also be sent as null: what Jackson writes for a field of a class
// generated from the schema that nobody set.
fn null_is_enabled<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or_else(enabled_by_default))
}

fn null_is_default_priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Ok(Option::<i32>::deserialize(d)?.unwrap_or_else(default_priority))
}

fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or_default())
}

/// What a matching rule does. Each becomes a follow-up event through the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Validate)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum RuleAction {
    /// Decide the approval the event is about.
    #[serde(rename = "approval.decide")]
    ApprovalDecide {
        #[garde(skip)]
        status: Decision,
        #[garde(length(chars, max = 4000))]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Escalate the approval the event is about to a role or a user.
    #[serde(rename = "approval.escalate")]
    ApprovalEscalate {
        #[garde(length(min = 1, max = 32))]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_role: Option<String>,
        #[garde(length(min = 1, max = 64))]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_user: Option<String>,
        #[garde(length(chars, max = 4000))]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Move the workflow the event is about (or the approval's workflow).
    #[serde(rename = "workflow.set_status")]
    WorkflowSetStatus {
        #[garde(skip)]
        status: WorkflowStatus,
    },
    /// Request an automation run.
    #[serde(rename = "automation.run")]
    AutomationRun {
        #[garde(length(min = 1, max = 128), pattern(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"))]
        automation: String,
        #[garde(skip)]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<Map<String, Value>>,
        #[garde(range(max = 2_592_000))]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        countdown_seconds: Option<u64>,
    },
    /// Write an audit record about the entity.
    #[serde(rename = "audit.note")]
    AuditNote {
        #[garde(length(chars, min = 1, max = 64))]
        action: String,
        #[garde(skip)]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<Map<String, Value>>,
    },
}

impl RuleAction {
    pub fn kind(&self) -> &'static str {
        match self {
            RuleAction::ApprovalDecide { .. } => "approval.decide",
            RuleAction::ApprovalEscalate { .. } => "approval.escalate",
            RuleAction::WorkflowSetStatus { .. } => "workflow.set_status",
            RuleAction::AutomationRun { .. } => "automation.run",
            RuleAction::AuditNote { .. } => "audit.note",
        }
    }
}

/// The event an action asks for, given the entity the triggering event changed (its kind, id,
/// and state after the change). An action that does not fit the entity says why.
pub fn plan(action: &RuleAction, entity: &str, entity_id: &str, state: &Value) -> Result<(EventType, Value), String> {
    let approval = || {
        (entity == "approval")
            .then(|| entity_id.to_string())
            .ok_or_else(|| "the event is not about an approval".to_string())
    };
    let (event_type, data) = match action {
        RuleAction::ApprovalDecide { status, reason } => {
            (EventType::ApprovalDecided, json!({"approvalId": approval()?, "status": status, "reason": reason}))
        }
        RuleAction::ApprovalEscalate { to_role, to_user, reason } => (
            EventType::ApprovalEscalate,
            json!({"approvalId": approval()?, "toRole": to_role, "toUser": to_user, "reason": reason}),
        ),
        RuleAction::WorkflowSetStatus { status } => {
            let workflow = match entity {
                "workflow" => entity_id.to_string(),
                "approval" => state["workflowId"].as_str().unwrap_or_default().to_string(),
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
            json!({"entity": entity, "entityId": entity_id, "action": action, "details": details}),
        ),
    };
    let mut data = data;
    if let Some(object) = data.as_object_mut() {
        object.retain(|_, v| !v.is_null());
    }
    Ok((event_type, data))
}

/// Does `pattern` (`approval.*`, `*`, or an exact type) cover `event_type`?
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

impl RuleDefinition {
    /// Everything `garde` cannot say: exactly one escalation target, and a condition that
    /// compiles within the bounds. The message is what the API answers with 422 and what
    /// `event.rejected` carries.
    pub fn check(&self) -> Result<(), String> {
        for (i, action) in self.then.iter().enumerate() {
            if let RuleAction::ApprovalEscalate { to_role, to_user, .. } = action
                && to_role.is_some() == to_user.is_some()
            {
                return Err(format!("then[{i}]: approval.escalate needs exactly one of toRole or toUser"));
            }
        }
        engine::compile(&self.when).map(|_| ()).map_err(|e| format!("when: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_match_exact_types_and_prefixes() {
        assert!(pattern_matches("approval.requested", "approval.requested"));
        assert!(!pattern_matches("approval.requested", "approval.decided"));
        assert!(pattern_matches("approval.*", "approval.decided"));
        assert!(!pattern_matches("approval.*", "workflow.created"));
        assert!(pattern_matches("*", "workflow.created"));
    }

    #[test]
    fn members_with_a_default_sent_as_null_take_the_default() {
        let rule: RuleDefinition = serde_json::from_value(json!({
            "id": null, "name": "n", "description": null, "enabled": null, "priority": null, "stopOnMatch": null,
            "on": "approval.requested", "when": "true", "then": [{"type": "audit.note", "action": "seen", "details": null}]
        }))
        .expect("nulls are defaults");
        assert_eq!((rule.enabled, rule.priority, rule.stop_on_match), (true, 100, false));
    }

    #[test]
    fn a_rule_parses_with_its_defaults() {
        let rule: RuleDefinition = serde_json::from_value(json!({
            "name": "auto-approve small",
            "on": "approval.requested",
            "when": "event.data.amount < 100",
            "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "small"}]
        }))
        .expect("valid rule");
        assert!(rule.enabled);
        assert_eq!(rule.priority, 100);
        assert!(!rule.stop_on_match);
        assert!(rule.validate().is_ok());
        assert!(rule.check().is_ok());
    }

    #[test]
    fn an_escalation_needs_exactly_one_target() {
        let rule: RuleDefinition = serde_json::from_value(json!({
            "name": "n", "on": "approval.requested", "when": "true",
            "then": [{"type": "approval.escalate", "reason": "r"}]
        }))
        .expect("parses");
        assert!(rule.check().expect_err("no target").contains("then[0]"));
    }
}
