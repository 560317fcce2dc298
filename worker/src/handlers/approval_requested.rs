//! `approval.requested`: a new `PENDING` approval on an `ACTIVE` workflow.

use automation_shared::db::approvals::Approval;
use automation_shared::events::{ApprovalRequested, NotificationType, RejectCode, derived_id};
use automation_shared::lifecycle::{ApprovalStatus, WorkflowStatus};
use serde_json::Value;
use sqlx::types::Json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = ApprovalRequested;
    const CREATES: bool = true;

    /// The approval it creates (its decisions follow it on this key). The workflow it names may be
    /// created on another key at the same moment: a request that finds no workflow waits for it.
    fn key(event_id: &str, data: &ApprovalRequested) -> EntityKey {
        EntityKey::new("approval", data.approval_id.unwrap_or_else(|| derived_id("approval", event_id)))
    }

    fn needs(event_id: &str, data: &ApprovalRequested, needs: &mut Needs) {
        // A shared lock on the workflow: requests on one workflow do not wait for each other, but
        // the workflow cannot be paused under them.
        needs.workflow_shared(data.workflow_id);
        needs.approval(data.approval_id.unwrap_or_else(|| derived_id("approval", event_id)));
    }

    fn handle(ctx: &mut Context<'_>, data: &ApprovalRequested) -> Result<Applied, Rejection> {
        let id = data.approval_id.unwrap_or_else(|| derived_id("approval", &ctx.envelope.scoped_id()));
        // The batch holds a shared lock on the workflow: it cannot be paused before the commit.
        let Some(workflow) = ctx.entities.workflows.get(data.workflow_id) else {
            return Err(reject(RejectCode::NotFound, format!("workflow {} does not exist", data.workflow_id)));
        };
        if workflow.status != WorkflowStatus::Active {
            return Err(reject(
                RejectCode::WorkflowNotActive,
                format!(
                    "workflow {} is {}; approvals can be requested only on an ACTIVE workflow",
                    workflow.id, workflow.status
                ),
            ));
        }
        if ctx.entities.approvals.get(id).is_some() {
            return Err(reject(RejectCode::AlreadyExists, format!("approval {id} already exists")));
        }
        let approval = Approval {
            seq: 0,
            id,
            workflow_id: workflow.id,
            title: data.title.clone(),
            amount: data.amount,
            currency: data.currency.clone(),
            requester_id: data.requester_id,
            status: ApprovalStatus::Pending,
            decided_by: None,
            reason: None,
            escalated_to: None,
            details: data.details.clone().map(|d| Json(Value::Object(d))),
            version: 1,
            created_at: ctx.now,
            updated_at: ctx.now,
            decided_at: None,
            escalated_at: None,
        };
        let applied = Applied::new("approval", id, NotificationType::ApprovalCreated, &approval);
        ctx.entities.approvals.insert(id, approval);
        Ok(applied)
    }
}
