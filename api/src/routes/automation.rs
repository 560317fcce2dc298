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
use crate::commands::{self, Submitted};
use crate::extract::{ValidJson, ValidQuery};
use crate::pagination::Keyset;
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

#[utoipa::path(
    post, path = "/api/v1/automation/execute", tag = "automation",
    security(("bearer" = [])),
    request_body = Execute,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same caller gives the same run"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the run is recorded"),
    ),
    responses(
        (status = 200, description = "Recorded (with Prefer: wait): queued or scheduled", body = Run),
        (status = 202, description = "Accepted: the broker confirmed the request", body = RunAccepted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid, or (with Prefer: wait) no such automation", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
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
    #[param(value_type = Option<String>)]
    pub state: Option<RunState>,
    #[garde(range(min = 1, max = 500))]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[garde(skip)]
    pub cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/api/v1/automation/runs", tag = "automation",
    security(("bearer" = [])),
    params(ListRuns),
    responses(
        (status = 200, description = "Newest first; the next page is in the Link header", body = Vec<Run>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ValidQuery(query): ValidQuery<ListRuns>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::RunAutomations)?;
    let mut list = Keyset::new(runs::SELECT, query.cursor.as_deref(), query.limit)?;
    list.and("automation = ", query.automation).and("state = ", query.state.map(RunState::as_str));
    Ok(list.fetch(&state.pool, |r: &Run| r.seq, "/api/v1/automation/runs", raw.as_deref()).await?.into_response())
}

#[utoipa::path(
    get, path = "/api/v1/automation/runs/{id}", tag = "automation",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses(
        (status = 200, body = Run),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<Json<Run>> {
    user.require(Permission::RunAutomations)?;
    let id = parse_id(&id, "run")?;
    runs::find(&state.pool, id).await?.map(Json).ok_or_else(|| ApiError::NotFound(format!("no run with id {id}")))
}

#[utoipa::path(
    post, path = "/api/v1/automation/runs/{id}/cancel", tag = "automation",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "Run id (UUID)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the run is cancelled"),
    ),
    responses(
        (status = 200, description = "Cancelled (with Prefer: wait)", body = Run),
        (status = 202, description = "Accepted: the broker confirmed the request", body = commands::Accepted),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The run already finished", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
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
