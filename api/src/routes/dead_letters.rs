//! The dead-letter store for admins: `GET /api/v1/admin/dead-letters`, one by id, and
//! `POST .../replay` and `.../discard` (by ids, by filter, or all; with a dry run). Every replay
//! and discard is audited with the admin's id.

use automation_shared::db::audit::ActorType;
use automation_shared::db::dead_letters::{self, DeadLetter, DeadLetterSummary, Filter};
use automation_shared::dead_letters::{self as actions, ActionReport, Operator};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use garde::Validate;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::parse_id;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::extract::{ListQuery, ValidJson};
use crate::openapi::responses::{JsonBody, Listing, Lookup, Secured, Unavailable};
use crate::pagination::{Page, Paging};
use crate::problem::{ApiError, ApiResult};

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListDeadLetters {
    /// Exact event type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    #[garde(length(max = 128))]
    pub event_type: Option<String>,
    /// Text the reason contains.
    #[garde(length(max = 200))]
    pub reason: Option<String>,
    /// `poison`, `exhausted` or `delivery_limit`.
    #[garde(length(max = 24))]
    pub error_kind: Option<String>,
    #[garde(length(max = 255))]
    pub origin_queue: Option<String>,
    /// `dead`, `replayed` or `discarded`.
    #[garde(length(max = 16))]
    pub state: Option<String>,
    #[garde(skip)]
    pub since: Option<DateTime<Utc>>,
    #[garde(skip)]
    pub until: Option<DateTime<Utc>>,
}

/// List dead letters
///
/// Newest first, narrowed by the filters given; paged by `limit` and `cursor`.
#[utoipa::path(
    get, path = "/api/v1/admin/dead-letters", tag = "dead letters", operation_id = "listDeadLetters",
    security(("bearer" = [])),
    params(ListDeadLetters, Paging),
    responses(
        (status = 200, description = "A page of dead letters, newest first; the next page is in the `Link` header", body = Vec<DeadLetterSummary>),
        Secured, Listing,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ListQuery(query, paging): ListQuery<ListDeadLetters>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::ManageDeadLetters)?;
    let limit = paging.limit();
    let before = paging.before()?;
    let filter = Filter {
        event_type: query.event_type,
        reason: query.reason,
        error_kind: query.error_kind,
        origin_queue: query.origin_queue,
        state: query.state,
        since: query.since,
        until: query.until,
    };
    if let Some((field, message)) = filter.invalid_field() {
        return Err(ApiError::field(field, message));
    }
    let rows = dead_letters::list(&state.pool, &filter, limit, before).await?;
    let last = rows.last().map(|r| r.seq);
    Ok(Page::new(rows, last, limit as usize, "/api/v1/admin/dead-letters", raw.as_deref().unwrap_or_default())
        .into_response())
}

/// A dead letter whole, with its body as text.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    #[serde(flatten)]
    pub dead_letter: DeadLetter,
    /// The body as text (bytes that are not UTF-8 are replaced).
    pub body: String,
}

/// Get a dead letter
///
/// The message whole: its headers, its history and its body as text.
#[utoipa::path(
    get, path = "/api/v1/admin/dead-letters/{id}", tag = "dead letters", operation_id = "getDeadLetter",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Dead letter id (UUID)")),
    responses(
        (status = 200, description = "The dead letter", body = DeadLetterView),
        Secured, Lookup,
    )
)]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<DeadLetterView>> {
    user.require(Permission::ManageDeadLetters)?;
    let id = parse_id(&id, "dead letter")?;
    let dead =
        dead_letters::get(&state.pool, id).await?.ok_or_else(|| ApiError::NotFound(format!("no dead letter {id}")))?;
    Ok(Json(DeadLetterView { body: dead.body_text(), dead_letter: dead }))
}

/// Which dead letters to act on: `ids`, or `filter`, or `all`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeadLetterAction {
    #[garde(length(max = 1000))]
    #[schema(max_items = 1000)]
    pub ids: Option<Vec<Uuid>>,
    /// Every dead letter matching (state `dead` unless it says otherwise).
    #[garde(skip)]
    pub filter: Option<Filter>,
    /// Every dead letter still `dead`.
    #[garde(skip)]
    pub all: Option<bool>,
    /// Say what would happen; change nothing.
    #[garde(skip)]
    pub dry_run: Option<bool>,
    /// At most this many.
    #[garde(range(min = 1, max = 100_000))]
    #[schema(minimum = 1, maximum = 100000)]
    pub limit: Option<u64>,
}

enum Verb {
    Replay,
    Discard,
}

async fn act(
    state: &AppState,
    user: &AuthUser,
    request: DeadLetterAction,
    verb: Verb,
) -> ApiResult<Json<ActionReport>> {
    user.require(Permission::ManageDeadLetters)?;
    let ids = request.ids.unwrap_or_default();
    let filter = request.filter.unwrap_or_default();
    let all = request.all.unwrap_or(false);
    if let Some((field, message)) = filter.invalid_field() {
        return Err(ApiError::field(format!("filter.{field}"), message));
    }
    let filtered = filter.event_type.is_some()
        || filter.reason.is_some()
        || filter.error_kind.is_some()
        || filter.origin_queue.is_some()
        || filter.state.is_some()
        || filter.since.is_some()
        || filter.until.is_some();
    if ids.is_empty() && !all && !filtered {
        return Err(ApiError::field("", "say which dead letters: ids, a filter, or all: true"));
    }
    let selected = actions::select(&state.pool, &ids, &filter, request.limit).await?;
    let mut report = ActionReport {
        matched: selected.len() as u64,
        dry_run: request.dry_run.unwrap_or(false),
        ..ActionReport::default()
    };
    if report.dry_run {
        report.ids = selected.iter().map(|d| d.summary.id).collect();
        return Ok(Json(report));
    }
    let publisher = match verb {
        Verb::Replay => Some(
            state.broker.publisher().ok_or_else(|| ApiError::BrokerUnavailable { reason: "not connected".into() })?,
        ),
        Verb::Discard => None,
    };
    let operator = Operator { id: user.id.clone(), actor_type: ActorType::User };
    let mut chain = state.audit.lock().await;
    for dead in &selected {
        let outcome = match &publisher {
            Some(publisher) => actions::replay(
                &state.pool,
                publisher,
                state.broker.names(),
                &state.system_users,
                &mut chain,
                dead,
                &operator,
            )
            .await
            .map(|()| true),
            None => actions::discard(&state.pool, &mut chain, dead, &operator).await,
        };
        report.record(dead.summary.id, outcome);
    }
    tracing::info!(user.id = %user.id, matched = report.matched, done = report.done, failed = report.failed.len(), "dead letters acted on");
    Ok(Json(report))
}

/// Replay dead letters
///
/// Publishes the selected dead letters again, each marked `replayed` once the broker confirmed
/// it; audited with the admin's id.
#[utoipa::path(
    post, path = "/api/v1/admin/dead-letters/replay", tag = "dead letters", operation_id = "replayDeadLetters",
    security(("bearer" = [])),
    request_body(content = DeadLetterAction, example = json!({"filter": {"type": "approval.decided", "reason": "schema_invalid"}, "dryRun": true})),
    responses(
        (status = 200, description = "What was replayed (each confirmed by the broker before it was marked replayed)", body = ActionReport),
        Secured, JsonBody,
        (status = 503, response = Unavailable),
    )
)]
pub async fn replay(
    State(state): State<AppState>,
    user: AuthUser,
    ValidJson(request): ValidJson<DeadLetterAction>,
) -> ApiResult<Json<ActionReport>> {
    act(&state, &user, request, Verb::Replay).await
}

/// Discard dead letters
///
/// Marks the selected dead letters `discarded`; audited with the admin's id.
#[utoipa::path(
    post, path = "/api/v1/admin/dead-letters/discard", tag = "dead letters", operation_id = "discardDeadLetters",
    security(("bearer" = [])),
    request_body(content = DeadLetterAction, example = json!({"ids": ["0190f7a2-5c1e-7c3a-9a41-3f8e2b6d1c20"]})),
    responses(
        (status = 200, description = "What was discarded", body = ActionReport),
        Secured, JsonBody,
    )
)]
pub async fn discard(
    State(state): State<AppState>,
    user: AuthUser,
    ValidJson(request): ValidJson<DeadLetterAction>,
) -> ApiResult<Json<ActionReport>> {
    act(&state, &user, request, Verb::Discard).await
}
