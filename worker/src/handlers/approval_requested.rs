//! `approval.requested`: a new `PENDING` approval on an `ACTIVE` workflow.

use automation_shared::db::approvals::{self, Approval};
use automation_shared::db::workflows;
use automation_shared::events::{ApprovalRequested, derived_id};
use automation_shared::lifecycle::{ApprovalStatus, WorkflowStatus};
use serde_json::Value;
use sqlx::types::Json;

use super::{Applied, Context, HandlerError, RejectCode, reject};

pub async fn handle(
    ctx: &mut Context<'_>,
    data: &ApprovalRequested,
) -> Result<Applied, HandlerError> {
    let id = data
        .approval_id
        .unwrap_or_else(|| derived_id("approval", &ctx.envelope.id));
    // A shared lock: the workflow cannot be paused between this check and the commit.
    let Some(workflow) = workflows::find_for_share(&mut *ctx.conn, data.workflow_id).await? else {
        return Err(reject(
            RejectCode::NotFound,
            format!("workflow {} does not exist", data.workflow_id),
        ));
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
    if approvals::find(&mut *ctx.conn, id).await?.is_some() {
        return Err(reject(
            RejectCode::AlreadyExists,
            format!("approval {id} already exists"),
        ));
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
    approvals::insert(&mut *ctx.conn, &approval).await?;
    Ok(Applied::new("approval", id, "approval.created", &approval))
}
