//! `approval.decided`: approves or rejects a `PENDING` or `ESCALATED` approval.

use automation_shared::db::audit::ActorType;
use automation_shared::events::{ApprovalDecided, NotificationType, RejectCode};
use automation_shared::lifecycle::Decision;
use serde_json::json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, check_version, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = ApprovalDecided;

    /// Ordered with every other event on the approval.
    fn key(_event_id: &str, data: &ApprovalDecided) -> EntityKey {
        EntityKey::new("approval", data.approval_id)
    }

    fn needs(_event_id: &str, data: &ApprovalDecided, needs: &mut Needs) {
        needs.approval(data.approval_id);
    }

    fn handle(ctx: &mut Context<'_>, data: &ApprovalDecided) -> Result<Applied, Rejection> {
        let Some(current) = ctx.entities.approvals.get(data.approval_id) else {
            return Err(reject(RejectCode::NotFound, format!("approval {} does not exist", data.approval_id)));
        };
        check_version("approval", current.version, data.expected_version)?;
        // Segregation of duties: nobody decides their own request (a rule may).
        let requester = current.requester_id.to_string();
        if ctx.envelope.actor_type != ActorType::Rule && ctx.envelope.actor_id.as_deref() == Some(requester.as_str()) {
            return Err(reject(RejectCode::Forbidden, "the requester of an approval cannot decide it"));
        }
        let from = current.status;
        let to = data.status.status();
        if !from.can_move_to(to) {
            return Err(reject(
                RejectCode::InvalidTransition,
                format!("approval {} is {from}; it cannot become {to}", current.id),
            ));
        }
        let (actor, now) = (ctx.actor(), ctx.now);
        let Some(approval) = ctx.entities.approvals.get_mut(data.approval_id) else {
            return Err(reject(RejectCode::NotFound, format!("approval {} does not exist", data.approval_id)));
        };
        approval.status = to;
        approval.decided_by = actor;
        approval.reason = data.reason.clone();
        approval.decided_at = Some(now);
        approval.updated_at = now;
        approval.version += 1;
        let notification = match data.status {
            Decision::Approved => NotificationType::ApprovalApproved,
            Decision::Rejected => NotificationType::ApprovalRejected,
        };
        Ok(Applied::new("approval", approval.id, notification, &*approval).with_audit_details(
            json!({"from": from, "to": to, "reason": approval.reason, "version": approval.version}),
        ))
    }
}
