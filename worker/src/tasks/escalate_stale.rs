//! `approvals.escalate_stale`: every `PENDING` approval older than its workflow's SLA is escalated.
//! The task asks for the escalations as `approval.escalate` events (ids derived from the approval,
//! so each approval is escalated once however often the task runs); the worker applies them, and
//! each is announced as `approval.escalated`.
//!
//! Params: `toRole` (default `admin`), `limit` (default 500, at most 5000).

use std::time::Duration;

use automation_shared::events::{EventType, derived_id};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{TaskContext, TaskError, TaskOutput, TaskSpec};

pub fn spec() -> TaskSpec {
    TaskSpec {
        name: "approvals.escalate_stale",
        max_attempts: 3,
        time_limit: Duration::from_secs(120),
        run: |ctx| Box::pin(run(ctx)),
    }
}

async fn run(ctx: TaskContext) -> Result<TaskOutput, TaskError> {
    let to_role = ctx.params.get("toRole").and_then(Value::as_str).unwrap_or("admin").to_string();
    let limit = match ctx.params.get("limit").and_then(Value::as_u64) {
        Some(l) if (1..=5000).contains(&l) => l,
        Some(_) => return Err(TaskError::fatal("params.limit must be 1 to 5000")),
        None => 500,
    };
    let stale: Vec<(String, DateTime<Utc>, u32)> = sqlx::query_as(
        "select a.id, a.created_at, w.approval_sla_hours from approvals a join workflows w on w.id = a.workflow_id \
         where a.status = 'PENDING' and w.approval_sla_hours is not null \
         and a.created_at < now(6) - interval w.approval_sla_hours hour order by a.created_at limit ?",
    )
    .bind(limit)
    .fetch_all(&ctx.pool)
    .await
    .map_err(|e| TaskError::retryable(format!("could not read the approvals: {e}")))?;
    let events = stale
        .iter()
        .map(|(id, created_at, sla)| {
            let data = json!({
                "approvalId": id,
                "toRole": to_role,
                "reason": format!("pending since {created_at}, past the workflow's SLA of {sla} hours"),
            });
            (derived_id("escalate-stale", id).to_string(), EventType::ApprovalEscalate, data)
        })
        .collect();
    let ids: Vec<&String> = stale.iter().map(|(id, _, _)| id).collect();
    Ok(TaskOutput { result: json!({"escalated": ids.len(), "approvalIds": ids, "toRole": to_role}), events })
}
