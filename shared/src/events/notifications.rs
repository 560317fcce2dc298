//! The notifications the worker publishes on the notifications exchange: their types
//! ([`NotificationType`]), the `data` of `event.rejected` ([`EventRejected`]), and a
//! notification as a listener such as the API reads it ([`Notification`]).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::outcome::RejectCode;

macro_rules! notification_types {
    ($($variant:ident => $name:literal, $summary:literal;)+) => {
        /// The type of a notification: its CloudEvents `type` and its routing key.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum NotificationType { $($variant,)+ }

        impl NotificationType {
            pub const ALL: &'static [NotificationType] = &[$(NotificationType::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $(NotificationType::$variant => $name,)+ }
            }

            pub fn parse(s: &str) -> Option<NotificationType> {
                match s { $($name => Some(NotificationType::$variant),)+ _ => None }
            }

            /// What causes it, as the AsyncAPI document says.
            pub fn summary(self) -> &'static str {
                match self { $(NotificationType::$variant => $summary,)+ }
            }
        }
    };
}

notification_types! {
    WorkflowCreated => "workflow.created", "a workflow was created";
    WorkflowStatusChanged => "workflow.status_changed", "a workflow changed status";
    ApprovalCreated => "approval.created", "an approval was requested";
    ApprovalApproved => "approval.approved", "an approval was approved";
    ApprovalRejected => "approval.rejected", "an approval was rejected";
    ApprovalEscalated => "approval.escalated", "an approval was escalated";
    AuditRecorded => "audit.recorded", "an audit record was written on request";
    RuleChanged => "rule.changed", "a rule was created, updated or deleted";
    RuleFired => "rule.fired", "a rule matched an event and its actions were queued";
    AutomationQueued => "automation.queued", "an automation run was queued";
    AutomationScheduled => "automation.scheduled", "an automation run waits for its start time";
    AutomationSucceeded => "automation.succeeded", "an automation run succeeded";
    AutomationFailed => "automation.failed", "an automation run failed for good";
    AutomationCancelled => "automation.cancelled", "an automation run was cancelled";
    EventRejected => "event.rejected", "an event was refused (data: eventId, type, reason, code)";
}

impl std::fmt::Display for NotificationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `data` of `event.rejected`: which event was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRejected {
    /// The id of the refused event.
    pub event_id: String,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Why, in words.
    pub reason: String,
    /// Why, for machines.
    pub code: RejectCode,
}

/// The `data` of `audit.recorded`: the record written on request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditNotice {
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    /// Who asked for it.
    pub actor_id: Option<String>,
    pub details: Option<Map<String, Value>>,
    /// The `audit.recorded` event that wrote it.
    pub event_id: String,
}

/// The `data` of `rule.fired`: a rule matched an event, and the actions it queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFired {
    pub rule_id: Uuid,
    pub rule_name: String,
    /// The version of the rule that matched.
    pub version: u32,
    /// The event it matched.
    pub event_id: String,
    pub event_type: String,
    /// What each action did, in words (`approval.decide → approval.decided <id>`, or why it
    /// was skipped).
    pub actions: Vec<String>,
}

/// A notification as a listener reads it: its type, the event that caused it, and its `data`.
/// Only what a listener acts on is read, so any notification of this shape is taken.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Notification {
    /// `None` for a type this build does not know (one a newer worker announces) or none at all.
    #[serde(rename = "type", default, deserialize_with = "known_type")]
    pub kind: Option<NotificationType>,
    /// The CloudEvents extension `causationid`: the id of the event this announces.
    #[serde(rename = "causationid", default)]
    pub causation_id: Option<String>,
    #[serde(default)]
    pub data: Value,
}

fn known_type<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<NotificationType>, D::Error> {
    Ok(NotificationType::parse(&String::deserialize(deserializer)?))
}

impl Notification {
    /// For `event.rejected`, its `data`, or why that could not be read; `None` for any other type.
    pub fn rejection(&self) -> Option<Result<EventRejected, serde_json::Error>> {
        (self.kind == Some(NotificationType::EventRejected)).then(|| EventRejected::deserialize(&self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_notification_type_reads_back_from_its_name() {
        for kind in NotificationType::ALL {
            assert_eq!(NotificationType::parse(kind.as_str()), Some(*kind));
            assert_eq!(kind.to_string(), kind.as_str());
            assert!(!kind.summary().is_empty());
        }
        assert_eq!(NotificationType::parse("approval.requested"), None, "an event type, not a notification");
    }

    #[test]
    fn the_notification_types_keep_the_names_consumers_bind_to() {
        let names: Vec<&str> = NotificationType::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "workflow.created",
                "workflow.status_changed",
                "approval.created",
                "approval.approved",
                "approval.rejected",
                "approval.escalated",
                "audit.recorded",
                "rule.changed",
                "rule.fired",
                "automation.queued",
                "automation.scheduled",
                "automation.succeeded",
                "automation.failed",
                "automation.cancelled",
                "event.rejected"
            ]
        );
    }

    #[test]
    fn event_rejected_data_keeps_its_field_names_and_round_trips() {
        let data = EventRejected {
            event_id: "e-1".into(),
            event_type: "approval.decided".into(),
            reason: "approval is APPROVED".into(),
            code: RejectCode::InvalidTransition,
        };
        let value = serde_json::to_value(&data).unwrap();
        assert_eq!(
            value,
            json!({"eventId": "e-1", "type": "approval.decided", "reason": "approval is APPROVED", "code": "invalid_transition"})
        );
        assert_eq!(serde_json::from_value::<EventRejected>(value).unwrap(), data);
    }

    #[test]
    fn a_rejection_notification_reads_as_its_code_and_reason() {
        let notification: Notification = serde_json::from_value(json!({
            "specversion": "1.0", "id": "n-1", "source": "/automation-engine/worker", "type": "event.rejected",
            "causationid": "e-1", "correlationid": "e-1",
            "data": {"eventId": "e-1", "type": "workflow.status_changed", "reason": "stale", "code": "version_conflict"}
        }))
        .unwrap();
        assert_eq!(notification.kind, Some(NotificationType::EventRejected));
        assert_eq!(notification.causation_id.as_deref(), Some("e-1"));
        let rejected = notification.rejection().expect("a rejection").expect("readable");
        assert_eq!(rejected.code, RejectCode::VersionConflict);
        assert_eq!(rejected.reason, "stale");
    }

    #[test]
    fn other_notifications_are_no_rejection_and_unknown_types_are_still_read() {
        let applied: Notification =
            serde_json::from_value(json!({"type": "approval.approved", "causationid": "e-1", "data": {}})).unwrap();
        assert_eq!(applied.kind, Some(NotificationType::ApprovalApproved));
        assert!(applied.rejection().is_none());
        let newer: Notification =
            serde_json::from_value(json!({"type": "approval.reopened", "causationid": "e-2"})).unwrap();
        assert_eq!(newer.kind, None);
        assert!(newer.rejection().is_none());
    }

    #[test]
    fn a_rejection_with_an_unknown_code_says_it_cannot_be_read() {
        let notification: Notification = serde_json::from_value(json!({
            "type": "event.rejected", "causationid": "e-1",
            "data": {"eventId": "e-1", "type": "workflow.created", "reason": "r", "code": "not_a_code"}
        }))
        .unwrap();
        assert!(notification.rejection().expect("a rejection").is_err());
    }
}
