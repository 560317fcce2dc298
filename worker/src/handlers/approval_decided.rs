//! `approval.decided`: approves or rejects a `PENDING` or `ESCALATED` approval.

use automation_shared::db::approvals;
use automation_shared::db::audit::ActorType;
use automation_shared::events::ApprovalDecided;
use automation_shared::lifecycle::Decision;
use serde_json::json;

use super::{Applied, Context, HandlerError, RejectCode, check_version, reject};

pub async fn handle(
    ctx: &mut Context<'_>,
    data: &ApprovalDecided,
) -> Result<Applied, HandlerError> {
    let Some(mut approval) = approvals::find_for_update(&mut *ctx.conn, data.approval_id).await?
    else {
        return Err(reject(
            RejectCode::NotFound,
            format!("approval {} does not exist", data.approval_id),
        ));
    };
    check_version("approval", approval.version, data.expected_version)?;
    // Segregation of duties: nobody decides their own request (a rule may).
    let requester = approval.requester_id.to_string();
    if ActorType::parse(&ctx.envelope.actor_type) != ActorType::Rule
        && ctx.envelope.actor_id.as_deref() == Some(requester.as_str())
    {
        return Err(reject(
            RejectCode::Forbidden,
            "the requester of an approval cannot decide it",
        ));
    }
    let from = approval.status;
    let to = data.status.status();
    if !from.can_move_to(to) {
        return Err(reject(
            RejectCode::InvalidTransition,
            format!("approval {} is {from}; it cannot become {to}", approval.id),
        ));
    }
    approval.status = to;
    approval.decided_by = ctx.actor();
    approval.reason = data.reason.clone();
    approval.decided_at = Some(ctx.now);
    approval.updated_at = ctx.now;
    approval.version += 1;
    approvals::update_decision(&mut *ctx.conn, &approval).await?;
    let notification = match data.status {
        Decision::Approved => "approval.approved",
        Decision::Rejected => "approval.rejected",
    };
    Ok(
        Applied::new("approval", approval.id, notification, &approval).with_audit_details(
            json!({"from": from, "to": to, "reason": approval.reason, "version": approval.version}),
        ),
    )
}
