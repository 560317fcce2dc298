//! `workflow.status_changed`: moves a workflow along its state machine.

use automation_shared::db::workflows;
use automation_shared::events::WorkflowStatusChanged;
use serde_json::json;

use super::{Applied, Context, HandlerError, RejectCode, check_version, reject};

pub async fn handle(
    ctx: &mut Context<'_>,
    data: &WorkflowStatusChanged,
) -> Result<Applied, HandlerError> {
    let Some(mut workflow) = workflows::find_for_update(&mut *ctx.conn, data.workflow_id).await?
    else {
        return Err(reject(
            RejectCode::NotFound,
            format!("workflow {} does not exist", data.workflow_id),
        ));
    };
    check_version("workflow", workflow.version, data.expected_version)?;
    let from = workflow.status;
    if !from.can_move_to(data.status) {
        return Err(reject(
            RejectCode::InvalidTransition,
            format!(
                "workflow {} is {from}; it cannot move to {}",
                workflow.id, data.status
            ),
        ));
    }
    workflow.status = data.status;
    workflow.version += 1;
    workflow.updated_at = ctx.now;
    workflows::update_status(&mut *ctx.conn, &workflow).await?;
    Ok(Applied::new(
        "workflow",
        workflow.id,
        "workflow.status_changed",
        &workflow,
    )
    .with_audit_details(json!({"from": from, "to": workflow.status, "version": workflow.version})))
}
