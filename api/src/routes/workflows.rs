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
use crate::commands::{self, Submitted};
use crate::extract::{ValidJson, ValidQuery};
use crate::pagination::Keyset;
use crate::problem::{ApiError, ApiResult, Problem};

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListWorkflows {
    #[garde(skip)]
    #[param(value_type = Option<String>, example = "ACTIVE")]
    pub status: Option<WorkflowStatus>,
    /// 1 to 500 (default 50).
    #[garde(range(min = 1, max = 500))]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[garde(skip)]
    pub cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/workflows", tag = "workflows",
    security(("bearer" = [])),
    params(ListWorkflows),
    responses(
        (status = 200, description = "Newest first; the next page is in the Link header", body = Vec<Workflow>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ValidQuery(query): ValidQuery<ListWorkflows>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(workflows::SELECT, query.cursor.as_deref(), query.limit)?;
    list.and("status = ", query.status.map(WorkflowStatus::as_str));
    Ok(list.fetch(&state.pool, |w: &Workflow| w.seq, "/workflows", raw.as_deref()).await?.into_response())
}

#[utoipa::path(
    get, path = "/workflows/{id}", tag = "workflows",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Workflow id (UUID)")),
    responses(
        (status = 200, body = Workflow),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
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
    #[schema(value_type = Option<String>, example = "ACTIVE")]
    pub status: Option<InitialWorkflowStatus>,
    /// Hours an approval may stay open (1 to 8760).
    #[garde(range(min = 1, max = 8760))]
    #[schema(minimum = 1, maximum = 8760)]
    pub approval_sla_hours: Option<u32>,
}

#[utoipa::path(
    post, path = "/workflows", tag = "workflows",
    security(("bearer" = [])),
    request_body = NewWorkflow,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same user gives the same event"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the worker is done"),
    ),
    responses(
        (status = 200, description = "Created (with Prefer: wait)", body = Workflow),
        (status = 202, description = "Accepted: the broker confirmed the event", body = commands::Accepted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
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
    #[schema(value_type = String, example = "PAUSED")]
    pub status: WorkflowStatus,
    #[garde(range(min = 1))]
    #[schema(minimum = 1)]
    pub expected_version: Option<u32>,
}

#[utoipa::path(
    patch, path = "/workflows/{id}", tag = "workflows",
    security(("bearer" = [])),
    request_body = ChangeWorkflow,
    params(
        ("id" = String, Path, description = "Workflow id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same user gives the same event"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the worker is done"),
    ),
    responses(
        (status = 200, description = "Changed (with Prefer: wait)", body = Workflow),
        (status = 202, description = "Accepted: the broker confirmed the event", body = commands::Accepted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused: an illegal move or a stale expectedVersion", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
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
