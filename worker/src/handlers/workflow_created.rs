//! `workflow.created`: a new workflow, `ACTIVE` unless asked to start as `DRAFT`.

use automation_shared::db::workflows::Workflow;
use automation_shared::events::{NotificationType, RejectCode, WorkflowCreated, derived_id};

use crate::entities::Needs;

use super::{Applied, Context, EntityKey, EventHandler, Rejection, reject};

pub struct Handler;

impl EventHandler for Handler {
    type Data = WorkflowCreated;
    const CREATES: bool = true;

    /// The workflow it creates.
    fn key(event_id: &str, data: &WorkflowCreated) -> EntityKey {
        EntityKey::new("workflow", data.workflow_id.unwrap_or_else(|| derived_id("workflow", event_id)))
    }

    fn needs(event_id: &str, data: &WorkflowCreated, needs: &mut Needs) {
        needs.workflow(data.workflow_id.unwrap_or_else(|| derived_id("workflow", event_id)));
    }

    fn handle(ctx: &mut Context<'_>, data: &WorkflowCreated) -> Result<Applied, Rejection> {
        let id = data.workflow_id.unwrap_or_else(|| derived_id("workflow", &ctx.envelope.scoped_id()));
        if ctx.entities.workflows.get(id).is_some() {
            return Err(reject(RejectCode::AlreadyExists, format!("workflow {id} already exists")));
        }
        let workflow = Workflow {
            seq: 0,
            id,
            name: data.name.clone(),
            description: data.description.clone(),
            status: data.status.unwrap_or_default().status(),
            approval_sla_hours: data.approval_sla_hours,
            version: 1,
            created_by: ctx.actor(),
            created_at: ctx.now,
            updated_at: ctx.now,
        };
        let applied = Applied::new("workflow", id, NotificationType::WorkflowCreated, &workflow);
        ctx.entities.workflows.insert(id, workflow);
        Ok(applied)
    }
}
