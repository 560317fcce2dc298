//! `automation.cancelled`: stops a run that has not finished. A run already executing finishes
//! its current attempt, but its result is not applied and it is not retried.

use automation_shared::db::runs::{self, RunState};
use automation_shared::events::AutomationCancelled;

use super::{Applied, Context, HandlerError, RejectCode, reject};

pub async fn handle(
    ctx: &mut Context<'_>,
    data: &AutomationCancelled,
) -> Result<Applied, HandlerError> {
    let Some(mut run) = runs::find_for_update(&mut *ctx.conn, data.run_id).await? else {
        return Err(reject(
            RejectCode::NotFound,
            format!("run {} does not exist", data.run_id),
        ));
    };
    if run.state.is_final() {
        return Err(reject(
            RejectCode::InvalidTransition,
            format!("run {} is already {}", run.id, run.state),
        ));
    }
    run.state = RunState::Cancelled;
    run.finished_at = Some(ctx.now);
    run.updated_at = ctx.now;
    runs::update(&mut *ctx.conn, &run).await?;
    Ok(Applied::new(
        "automation_run",
        run.id,
        "automation.cancelled",
        &run,
    ))
}
