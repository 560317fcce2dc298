//! Who may do what: the roles of CONTRACT §3, what each may do, and which event types each may
//! send. One table for both doors: the API checks a caller's role against it for
//! `POST /api/v1/events` exactly as for the dedicated routes, and the worker refuses outside AMQP
//! publishers the types only the system sends (docs/events.md, "Who may send what").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::events::EventType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Approver,
    Requester,
    Viewer,
    /// A machine caller (another service).
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Admin, Role::Approver, Role::Requester, Role::Viewer, Role::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Approver => "approver",
            Role::Requester => "requester",
            Role::Viewer => "viewer",
            Role::Service => "service",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "approver" => Ok(Role::Approver),
            "requester" => Ok(Role::Requester),
            "viewer" => Ok(Role::Viewer),
            "service" => Ok(Role::Service),
            other => Err(format!("{other:?} is not a role (admin, approver, requester, viewer, service)")),
        }
    }
}

/// What a caller may do: the table of CONTRACT §3, for the API's routes and, through
/// [`Permission::to_send`], for every event type at both doors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read approvals, workflows, audit logs, insights and rules.
    Read,
    RequestApproval,
    DecideApproval,
    ManageWorkflows,
    ManageUsers,
    WriteAudit,
    PublishEvents,
    RunAutomations,
    ManageRules,
    ManageDeadLetters,
}

impl Permission {
    pub fn allows(self, role: Role) -> bool {
        use Role::*;
        match self {
            Permission::Read => matches!(role, Admin | Approver | Requester | Viewer | Service),
            Permission::RequestApproval => matches!(role, Admin | Approver | Requester),
            Permission::DecideApproval => matches!(role, Admin | Approver),
            Permission::ManageWorkflows
            | Permission::ManageUsers
            | Permission::ManageRules
            | Permission::ManageDeadLetters => role == Admin,
            Permission::WriteAudit | Permission::PublishEvents | Permission::RunAutomations => {
                matches!(role, Admin | Service)
            }
        }
    }
}

impl Permission {
    /// What sending an event of this type takes; `None` for the types only the system sends
    /// (a rule's escalation), which no caller and no publisher may send.
    pub fn to_send(event_type: EventType) -> Option<Permission> {
        Some(match event_type {
            EventType::WorkflowCreated | EventType::WorkflowStatusChanged => Permission::ManageWorkflows,
            EventType::ApprovalRequested => Permission::RequestApproval,
            EventType::ApprovalDecided => Permission::DecideApproval,
            EventType::ApprovalEscalate => return None,
            EventType::AuditRecorded => Permission::WriteAudit,
            EventType::RuleUpserted | EventType::RuleDeleted => Permission::ManageRules,
            EventType::AutomationRequested | EventType::AutomationCancelled => Permission::RunAutomations,
        })
    }
}

impl EventType {
    /// Does anyone outside the system (a caller of the API, an AMQP publisher) send this type?
    pub fn sent_from_outside(self) -> bool {
        Permission::to_send(self).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_door_asks_what_the_dedicated_routes_ask() {
        // POST /approvals is requester+, PATCH /approvals/{id} approver+, workflows and rules
        // admin, audit and automations admin or service (CONTRACT §3).
        let roles = |t: EventType| -> Vec<Role> {
            let Some(permission) = Permission::to_send(t) else { return Vec::new() };
            Role::ALL.iter().copied().filter(|r| permission.allows(*r)).collect()
        };
        use Role::*;
        assert_eq!(roles(EventType::ApprovalRequested), [Admin, Approver, Requester]);
        assert_eq!(roles(EventType::ApprovalDecided), [Admin, Approver]);
        assert_eq!(roles(EventType::WorkflowCreated), [Admin]);
        assert_eq!(roles(EventType::WorkflowStatusChanged), [Admin]);
        assert_eq!(roles(EventType::RuleUpserted), [Admin]);
        assert_eq!(roles(EventType::RuleDeleted), [Admin]);
        assert_eq!(roles(EventType::AuditRecorded), [Admin, Service]);
        assert_eq!(roles(EventType::AutomationRequested), [Admin, Service]);
        assert_eq!(roles(EventType::AutomationCancelled), [Admin, Service]);
        assert!(roles(EventType::ApprovalEscalate).is_empty());
        assert!(!EventType::ApprovalEscalate.sent_from_outside());
    }
}
