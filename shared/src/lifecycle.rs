//! The state machines of workflows and approvals (CONTRACT §4): which moves are legal.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkflowStatus {
    Draft,
    Active,
    Paused,
    Completed,
    Cancelled,
}

impl WorkflowStatus {
    pub const ALL: [WorkflowStatus; 5] = [
        WorkflowStatus::Draft,
        WorkflowStatus::Active,
        WorkflowStatus::Paused,
        WorkflowStatus::Completed,
        WorkflowStatus::Cancelled,
    ];

    /// `DRAFT → ACTIVE | CANCELLED`, `ACTIVE → PAUSED | COMPLETED | CANCELLED`,
    /// `PAUSED → ACTIVE | CANCELLED`; nothing leaves `COMPLETED` or `CANCELLED`.
    pub fn can_move_to(self, to: WorkflowStatus) -> bool {
        use WorkflowStatus::*;
        matches!(
            (self, to),
            (Draft, Active | Cancelled) | (Active, Paused | Completed | Cancelled) | (Paused, Active | Cancelled)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Draft => "DRAFT",
            WorkflowStatus::Active => "ACTIVE",
            WorkflowStatus::Paused => "PAUSED",
            WorkflowStatus::Completed => "COMPLETED",
            WorkflowStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<WorkflowStatus> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Escalated,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 4] =
        [ApprovalStatus::Pending, ApprovalStatus::Approved, ApprovalStatus::Rejected, ApprovalStatus::Escalated];

    /// `PENDING → APPROVED | REJECTED | ESCALATED`, `ESCALATED → APPROVED | REJECTED`.
    pub fn can_move_to(self, to: ApprovalStatus) -> bool {
        use ApprovalStatus::*;
        matches!((self, to), (Pending, Approved | Rejected | Escalated) | (Escalated, Approved | Rejected))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "PENDING",
            ApprovalStatus::Approved => "APPROVED",
            ApprovalStatus::Rejected => "REJECTED",
            ApprovalStatus::Escalated => "ESCALATED",
        }
    }

    pub fn parse(s: &str) -> Option<ApprovalStatus> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn is_open(self) -> bool {
        matches!(self, ApprovalStatus::Pending | ApprovalStatus::Escalated)
    }
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two outcomes of `approval.decided`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    pub fn status(self) -> ApprovalStatus {
        match self {
            Decision::Approved => ApprovalStatus::Approved,
            Decision::Rejected => ApprovalStatus::Rejected,
        }
    }
}

/// The states a workflow may be created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, ToSchema, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitialWorkflowStatus {
    Draft,
    #[default]
    Active,
}

impl InitialWorkflowStatus {
    pub fn status(self) -> WorkflowStatus {
        match self {
            InitialWorkflowStatus::Draft => WorkflowStatus::Draft,
            InitialWorkflowStatus::Active => WorkflowStatus::Active,
        }
    }
}

/// A status column held a value no state machine knows.
#[derive(Debug, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl TryFrom<String> for WorkflowStatus {
    type Error = UnknownStatus;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        WorkflowStatus::parse(&value).ok_or(UnknownStatus(value))
    }
}

impl TryFrom<String> for ApprovalStatus {
    type Error = UnknownStatus;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ApprovalStatus::parse(&value).ok_or(UnknownStatus(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_moves_follow_the_contract() {
        use WorkflowStatus::*;
        let legal = [
            (Draft, Active),
            (Draft, Cancelled),
            (Active, Paused),
            (Active, Completed),
            (Active, Cancelled),
            (Paused, Active),
            (Paused, Cancelled),
        ];
        for from in WorkflowStatus::ALL {
            for to in WorkflowStatus::ALL {
                assert_eq!(from.can_move_to(to), legal.contains(&(from, to)), "{from} → {to}");
            }
        }
    }

    #[test]
    fn approval_moves_follow_the_contract() {
        use ApprovalStatus::*;
        let legal = [
            (Pending, Approved),
            (Pending, Rejected),
            (Pending, Escalated),
            (Escalated, Approved),
            (Escalated, Rejected),
        ];
        for from in ApprovalStatus::ALL {
            for to in ApprovalStatus::ALL {
                assert_eq!(from.can_move_to(to), legal.contains(&(from, to)), "{from} → {to}");
            }
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in WorkflowStatus::ALL {
            assert_eq!(WorkflowStatus::parse(s.as_str()), Some(s));
        }
        for s in ApprovalStatus::ALL {
            assert_eq!(ApprovalStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ApprovalStatus::parse("approved"), None);
    }
}
