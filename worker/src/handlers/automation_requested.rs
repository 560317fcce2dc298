//! `automation.requested`: records a run, then queues it now or schedules it for later. A
//! scheduled run waits in the database, not in a consumer.

use automation_shared::db::runs::{self, Run, RunState};
use automation_shared::events::{AutomationRequested, NotificationType, RejectCode, derived_id};
use serde_json::Value;
use sqlx::types::Json;

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = AutomationRequested;
    const CREATES: bool = true;

    /// The run it creates.
    fn key(event_id: &str, data: &AutomationRequested) -> EntityKey {
        EntityKey::new("automation_run", data.run_id.unwrap_or_else(|| derived_id("run", event_id)))
    }

    fn needs(event_id: &str, data: &AutomationRequested, needs: &mut Needs) {
        needs.run(data.run_id.unwrap_or_else(|| derived_id("run", event_id)));
    }

    fn handle(ctx: &mut Context<'_>, data: &AutomationRequested) -> Result<Applied, Rejection> {
        let Some(task) = ctx.registry.get(&data.automation) else {
            return Err(reject(
                RejectCode::UnknownAutomation,
                format!(
                    "no automation is registered as {:?} (known: {})",
                    data.automation,
                    ctx.registry.names().join(", ")
                ),
            ));
        };
        let id = data.run_id.unwrap_or_else(|| derived_id("run", &ctx.envelope.scoped_id()));
        if ctx.entities.runs.get(id).is_some() {
            return Err(reject(RejectCode::AlreadyExists, format!("run {id} already exists")));
        }
        let countdown = data.countdown_seconds.map(|s| ctx.now + chrono::Duration::seconds(s as i64));
        let run_at = match (data.run_at, countdown) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .filter(|at| *at > ctx.now);
        let trace = automation_shared::traces::TraceHeaders::current();
        let run = Run {
            seq: 0,
            id,
            automation: data.automation.clone(),
            params: data.params.clone().map(|p| Json(Value::Object(p))),
            state: if run_at.is_some() { RunState::Scheduled } else { RunState::Queued },
            attempts: 0,
            max_attempts: task.max_attempts(),
            result: None,
            error: None,
            run_at,
            event_id: Some(ctx.envelope.id.clone()),
            schedule_name: None,
            requested_by: ctx.actor(),
            created_at: ctx.now,
            started_at: None,
            finished_at: None,
            updated_at: ctx.now,
            // The handler's span: every attempt of the run continues this event's trace.
            traceparent: trace.traceparent.filter(|t| t.len() <= runs::MAX_TRACEPARENT),
            tracestate: trace.tracestate.filter(|t| t.len() <= runs::MAX_TRACESTATE),
        };
        let notification = if run.state == RunState::Queued {
            ctx.outbox.push(crate::tasks::start_message(run.id, 1));
            NotificationType::AutomationQueued
        } else {
            NotificationType::AutomationScheduled
        };
        let applied = Applied::new("automation_run", id, notification, &run);
        ctx.entities.runs.insert(id, run);
        Ok(applied)
    }
}
