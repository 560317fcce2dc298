//! Automations (CONTRACT §7): run a named task now or later (`automation.requested`), list and
//! read runs, cancel one (`automation.cancelled`).

use automation_shared::db::runs::{self, Run, RunState};
use automation_shared::events::{AutomationCancelled, AutomationRequested, EventData, derived_id};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use garde::Validate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::parse_id;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::commands::{self, CommandHeaders, Submitted};
use crate::extract::{ListQuery, ValidJson};
use crate::openapi::responses::{JsonBody, Listing, Lookup, Publishing, Secured};
use crate::pagination::{Keyset, Paging};
use crate::problem::{ApiError, ApiResult, Problem};

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Execute {
    /// A registered task: `webhook.call`, `approvals.escalate_stale`, `insights.recompute`.
    #[garde(length(min = 1, max = 128), pattern(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"))]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$",
        example = "webhook.call"
    )]
    pub automation: String,
    #[garde(skip)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    /// Start no earlier than this many seconds from now (at most 30 days).
    #[garde(range(max = 2_592_000))]
    #[schema(maximum = 2592000)]
    pub countdown_seconds: Option<u64>,
    /// Start no earlier than this time.
    #[garde(skip)]
    pub run_at: Option<DateTime<Utc>>,
}

/// The answer to an accepted run request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunAccepted {
    pub event_id: String,
    pub status: &'static str,
    pub status_url: String,
    pub run_id: Uuid,
    /// Where to follow the run.
    pub run_url: String,
}

/// Run an automation
///
/// Publishes `automation.requested`: the named task runs now, after `countdownSeconds`, or at
/// `runAt`. An unknown automation is refused (422 `unknown_automation` with `Prefer: wait`).
#[utoipa::path(
    post, path = "/api/v1/automation/execute", tag = "automation", operation_id = "executeAutomation",
    security(("bearer" = [])),
    request_body(content = Execute, example = json!({
        "automation": "webhook.call",
        "params": {"url": "https://hooks.example.com/approvals", "body": {"hello": "world"}},
        "countdownSeconds": 60
    })),
    params(CommandHeaders),
    responses(
        (status = 200, description = "Recorded (with `Prefer: wait`): the run, queued or scheduled", body = Run),
        Secured, JsonBody, Publishing,
        (status = 202, description = "Accepted: the broker confirmed the request. Follow the run at `runUrl`, also sent as `Location`",
            body = RunAccepted, headers(("Location" = String, description = "The run's URL, `/api/v1/automation/runs/{runId}`"))),
    )
)]
pub async fn execute(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ValidJson(body): ValidJson<Execute>,
) -> ApiResult<Response> {
    user.require(Permission::RunAutomations)?;
    let event_id = commands::event_id(&state, &user, "POST /api/v1/automation/execute", &headers).await?;
    let run_id = derived_id("run", &event_id);
    let data = EventData::AutomationRequested(AutomationRequested {
        run_id: Some(run_id),
        automation: body.automation,
        params: body.params,
        countdown_seconds: body.countdown_seconds,
        run_at: body.run_at,
    });
    let run_url = format!("/api/v1/automation/runs/{run_id}");
    match commands::submit(&state, &user, &headers, event_id, data).await? {
        Submitted::Accepted { event_id } => {
            let body = RunAccepted {
                status_url: commands::status_url(&event_id),
                event_id,
                status: "accepted",
                run_id,
                run_url: run_url.clone(),
            };
            let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
            if let Ok(location) = HeaderValue::from_str(&run_url) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        applied => Ok(applied.respond(&run_url, runs::find(&state.pool, run_id)).await),
    }
}

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListRuns {
    /// Automation names are ASCII.
    #[garde(ascii, length(max = 128))]
    pub automation: Option<String>,
    /// `queued`, `scheduled`, `running`, `succeeded`, `failed`, `retrying`, `cancelled`.
    #[garde(skip)]
    #[param(inline)]
    pub state: Option<RunState>,
}

/// List automation runs
///
/// Newest first, narrowed by automation and state; paged by `limit` and `cursor`.
#[utoipa::path(
    get, path = "/api/v1/automation/runs", tag = "automation", operation_id = "listAutomationRuns",
    security(("bearer" = [])),
    params(ListRuns, Paging),
    responses(
        (status = 200, description = "A page of runs, newest first; the next page is in the `Link` header", body = Vec<Run>),
        Secured, Listing,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ListQuery(query, paging): ListQuery<ListRuns>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::RunAutomations)?;
    let mut list = Keyset::new(runs::SELECT, &paging)?;
    list.and("automation = ", query.automation).and("state = ", query.state.map(RunState::as_str));
    Ok(list.fetch(&state.pool, |r: &Run| r.seq, "/api/v1/automation/runs", raw.as_deref()).await?.into_response())
}

/// Get an automation run
///
/// Its state, attempts, result and error.
#[utoipa::path(
    get, path = "/api/v1/automation/runs/{id}", tag = "automation", operation_id = "getAutomationRun",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses(
        (status = 200, description = "The run", body = Run),
        Secured, Lookup,
    )
)]
pub async fn get(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    user.require(Permission::RunAutomations)?;
    let id = parse_id(&id, "run")?;
    runs::find(&state.pool, id).await?.map(Json).ok_or_else(|| ApiError::NotFound(format!("no run with id {id}")))
}

/// Cancel an automation run
///
/// Publishes `automation.cancelled` for a run that has not finished.
#[utoipa::path(
    post, path = "/api/v1/automation/runs/{id}/cancel", tag = "automation", operation_id = "cancelAutomationRun",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "Cancelled (with `Prefer: wait`): the run", body = Run),
        Secured, Lookup, Publishing,
        (status = 409, description = "The run already finished (or, with `Prefer: wait`, the worker refused the cancel)",
            body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    user.require(Permission::RunAutomations)?;
    let id = parse_id(&id, "run")?;
    let Some(run) = runs::find(&state.pool, id).await? else {
        return Err(ApiError::NotFound(format!("no run with id {id}")));
    };
    if run.state.is_final() {
        return Err(ApiError::Conflict(format!("run {id} is already {}", run.state)));
    }
    let event_id =
        commands::event_id(&state, &user, &format!("POST /api/v1/automation/runs/{id}/cancel"), &headers).await?;
    let data = EventData::AutomationCancelled(AutomationCancelled { run_id: id });
    let submitted = commands::submit(&state, &user, &headers, event_id, data).await?;
    Ok(submitted.respond(&format!("/api/v1/automation/runs/{id}"), runs::find(&state.pool, id)).await)
}
