//! The notifications the worker publishes on the notifications exchange: their types
//! ([`NotificationType`]) and what causes each.

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
    EventRejected => "event.rejected", "an event was refused (data: eventId, type, reason)";
}

impl std::fmt::Display for NotificationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
