//! `approval.escalate`: hands a `PENDING` approval to a role or a user (from a rule, or from
//! `approvals.escalate_stale`).

use automation_shared::events::{ApprovalEscalate, NotificationType, RejectCode};
use automation_shared::lifecycle::ApprovalStatus;
use serde_json::json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = ApprovalEscalate;

    /// Ordered with every other event on the approval.
    fn key(_event_id: &str, data: &ApprovalEscalate) -> EntityKey {
        EntityKey::new("approval", data.approval_id)
    }

    fn needs(_event_id: &str, data: &ApprovalEscalate, needs: &mut Needs) {
        needs.approval(data.approval_id);
    }

    fn handle(ctx: &mut Context<'_>, data: &ApprovalEscalate) -> Result<Applied, Rejection> {
        let Some(current) = ctx.entities.approvals.get(data.approval_id) else {
            return Err(reject(RejectCode::NotFound, format!("approval {} does not exist", data.approval_id)));
        };
        if !current.status.can_move_to(ApprovalStatus::Escalated) {
            return Err(reject(
                RejectCode::InvalidTransition,
                format!("approval {} is {}; only a PENDING approval can be escalated", current.id, current.status),
            ));
        }
        let Some(target) = data.to_user.clone().or_else(|| data.to_role.clone().map(|role| format!("role:{role}")))
        else {
            return Err(reject(RejectCode::InvalidTransition, "an escalation needs toRole or toUser"));
        };
        let now = ctx.now;
        let Some(approval) = ctx.entities.approvals.get_mut(data.approval_id) else {
            return Err(reject(RejectCode::NotFound, format!("approval {} does not exist", data.approval_id)));
        };
        approval.status = ApprovalStatus::Escalated;
        approval.escalated_to = Some(target.clone());
        approval.escalated_at = Some(now);
        approval.updated_at = now;
        approval.version += 1;
        Ok(Applied::new("approval", approval.id, NotificationType::ApprovalEscalated, &*approval)
            .with_audit_details(json!({"to": target, "reason": data.reason, "version": approval.version})))
    }
}
