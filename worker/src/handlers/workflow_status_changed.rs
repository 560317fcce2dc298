//! `workflow.status_changed`: moves a workflow along its state machine.

use automation_shared::events::{NotificationType, RejectCode, WorkflowStatusChanged};
use serde_json::json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, check_version, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = WorkflowStatusChanged;

    /// Ordered with every other event on the workflow.
    fn key(_event_id: &str, data: &WorkflowStatusChanged) -> EntityKey {
        EntityKey::new("workflow", data.workflow_id)
    }

    fn needs(_event_id: &str, data: &WorkflowStatusChanged, needs: &mut Needs) {
        needs.workflow(data.workflow_id);
    }

    fn handle(ctx: &mut Context<'_>, data: &WorkflowStatusChanged) -> Result<Applied, Rejection> {
        let Some(current) = ctx.entities.workflows.get(data.workflow_id) else {
            return Err(reject(RejectCode::NotFound, format!("workflow {} does not exist", data.workflow_id)));
        };
        check_version("workflow", current.version, data.expected_version)?;
        let from = current.status;
        if !from.can_move_to(data.status) {
            return Err(reject(
                RejectCode::InvalidTransition,
                format!("workflow {} is {from}; it cannot move to {}", current.id, data.status),
            ));
        }
        let now = ctx.now;
        let Some(workflow) = ctx.entities.workflows.get_mut(data.workflow_id) else {
            return Err(reject(RejectCode::NotFound, format!("workflow {} does not exist", data.workflow_id)));
        };
        workflow.status = data.status;
        workflow.version += 1;
        workflow.updated_at = now;
        Ok(Applied::new("workflow", workflow.id, NotificationType::WorkflowStatusChanged, &*workflow)
            .with_audit_details(json!({"from": from, "to": workflow.status, "version": workflow.version})))
    }
}
