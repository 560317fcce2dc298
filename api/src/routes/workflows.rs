//! Workflows: list, read, create (`workflow.created`) and move (`workflow.status_changed`).

use automation_shared::db::workflows::{self, Workflow};
use automation_shared::events::{EventData, WorkflowCreated, WorkflowStatusChanged, derived_id};
use automation_shared::lifecycle::{InitialWorkflowStatus, WorkflowStatus};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use garde::Validate;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::parse_id;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::commands::{self, CommandHeaders, Submitted};
use crate::extract::{ListQuery, ValidJson};
use crate::openapi::responses::{JsonBody, Listing, Lookup, Publishing, Secured};
use crate::pagination::{Keyset, Paging};
use crate::problem::{ApiError, ApiResult};

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListWorkflows {
    #[garde(skip)]
    #[param(inline, example = "ACTIVE")]
    pub status: Option<WorkflowStatus>,
}

/// List workflows
///
/// Newest first, optionally only those in one status; paged by `limit` and `cursor`.
#[utoipa::path(
    get, path = "/workflows", tag = "workflows", operation_id = "listWorkflows",
    security(("bearer" = [])),
    params(ListWorkflows, Paging),
    responses(
        (status = 200, description = "A page of workflows, newest first; the next page is in the `Link` header", body = Vec<Workflow>),
        Secured, Listing,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ListQuery(query, paging): ListQuery<ListWorkflows>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(workflows::SELECT, &paging)?;
    list.and("status = ", query.status.map(WorkflowStatus::as_str));
    Ok(list.fetch(&state.pool, |w: &Workflow| w.seq, "/workflows", raw.as_deref()).await?.into_response())
}

/// Get a workflow
///
/// The workflow as it is now, with its `version`.
#[utoipa::path(
    get, path = "/workflows/{id}", tag = "workflows", operation_id = "getWorkflow",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    responses(
        (status = 200, description = "The workflow", body = Workflow),
        Secured, Lookup,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Workflow>> {
    user.require(Permission::Read)?;
    Ok(axum::Json(find(&state, &id).await?))
}

async fn find(state: &AppState, id: &str) -> ApiResult<Workflow> {
    let uuid = parse_id(id, "workflow")?;
    workflows::find(&state.pool, uuid).await?.ok_or_else(|| ApiError::NotFound(format!("no workflow with id {uuid}")))
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewWorkflow {
    #[garde(length(chars, min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[garde(length(chars, max = 4000))]
    #[schema(max_length = 4000)]
    pub description: Option<String>,
    /// `DRAFT` or `ACTIVE` (the default).
    #[garde(skip)]
    pub status: Option<InitialWorkflowStatus>,
    /// Hours an approval may stay open (1 to 8760).
    #[garde(range(min = 1, max = 8760))]
    #[schema(minimum = 1, maximum = 8760)]
    pub approval_sla_hours: Option<u32>,
}

/// Create a workflow
///
/// Publishes `workflow.created`; the workflow starts `ACTIVE` unless `status` says `DRAFT`.
#[utoipa::path(
    post, path = "/workflows", tag = "workflows", operation_id = "createWorkflow",
    security(("bearer" = [])),
    request_body(content = NewWorkflow, example = json!({
        "name": "Purchases over 1000 EUR", "description": "Hardware and software purchases", "approvalSlaHours": 48
    })),
    params(CommandHeaders),
    responses(
        (status = 200, description = "Created (with `Prefer: wait`): the new workflow", body = Workflow),
        Secured, JsonBody, Publishing,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ValidJson(body): ValidJson<NewWorkflow>,
) -> ApiResult<Response> {
    user.require(Permission::ManageWorkflows)?;
    let event_id = commands::event_id(&state, &user, "POST /workflows", &headers).await?;
    let workflow_id = derived_id("workflow", &event_id);
    let data = EventData::WorkflowCreated(WorkflowCreated {
        workflow_id: Some(workflow_id),
        name: body.name,
        description: body.description,
        status: body.status,
        approval_sla_hours: body.approval_sla_hours,
    });
    let submitted = commands::submit(&state, &user, &headers, event_id, data).await?;
    Ok(respond(&state, submitted, workflow_id).await)
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChangeWorkflow {
    #[garde(skip)]
    pub status: WorkflowStatus,
    #[garde(range(min = 1))]
    #[schema(minimum = 1)]
    pub expected_version: Option<u32>,
}

/// Change a workflow's status
///
/// Publishes `workflow.status_changed`. An illegal move (e.g. out of `COMPLETED`) or a stale
/// `expectedVersion` is refused (409 with `Prefer: wait`).
#[utoipa::path(
    patch, path = "/workflows/{id}", tag = "workflows", operation_id = "changeWorkflowStatus",
    security(("bearer" = [])),
    request_body(content = ChangeWorkflow, example = json!({"status": "PAUSED", "expectedVersion": 2})),
    params(("id" = String, Path, description = "Workflow id (UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "Changed (with `Prefer: wait`): the workflow after the move", body = Workflow),
        Secured, Lookup, JsonBody, Publishing,
    )
)]
pub async fn change(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<ChangeWorkflow>,
) -> ApiResult<Response> {
    user.require(Permission::ManageWorkflows)?;
    let workflow = find(&state, &id).await?;
    let event_id = commands::event_id(&state, &user, &format!("PATCH /workflows/{}", workflow.id), &headers).await?;
    let data = EventData::WorkflowStatusChanged(WorkflowStatusChanged {
        workflow_id: workflow.id,
        status: body.status,
        expected_version: body.expected_version,
    });
    let submitted = commands::submit(&state, &user, &headers, event_id, data).await?;
    Ok(respond(&state, submitted, workflow.id).await)
}

async fn respond(state: &AppState, submitted: Submitted, workflow: Uuid) -> Response {
    submitted.respond(&format!("/workflows/{workflow}"), workflows::find(&state.pool, workflow)).await
}
