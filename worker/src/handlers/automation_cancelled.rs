//! `automation.cancelled`: stops a run that has not finished. A run already executing finishes
//! its current attempt, but its result is not applied and it is not retried.

use automation_shared::db::runs::RunState;
use automation_shared::events::{AutomationCancelled, NotificationType, RejectCode};

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = AutomationCancelled;

    /// Ordered with the request of the run.
    fn key(_event_id: &str, data: &AutomationCancelled) -> EntityKey {
        EntityKey::new("automation_run", data.run_id)
    }

    fn needs(_event_id: &str, data: &AutomationCancelled, needs: &mut Needs) {
        needs.run(data.run_id);
    }

    fn handle(ctx: &mut Context<'_>, data: &AutomationCancelled) -> Result<Applied, Rejection> {
        let Some(current) = ctx.entities.runs.get(data.run_id) else {
            return Err(reject(RejectCode::NotFound, format!("run {} does not exist", data.run_id)));
        };
        if current.state.is_final() {
            return Err(reject(
                RejectCode::InvalidTransition,
                format!("run {} is already {}", current.id, current.state),
            ));
        }
        let now = ctx.now;
        let Some(run) = ctx.entities.runs.get_mut(data.run_id) else {
            return Err(reject(RejectCode::NotFound, format!("run {} does not exist", data.run_id)));
        };
        run.state = RunState::Cancelled;
        run.finished_at = Some(now);
        run.updated_at = now;
        Ok(Applied::new("automation_run", run.id, NotificationType::AutomationCancelled, &*run))
    }
}
