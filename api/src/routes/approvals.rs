//! Approvals: list, read, request (`approval.requested`) and decide (`approval.decided`).

use automation_shared::db::approvals::{self, Approval};
use automation_shared::db::workflows;
use automation_shared::events::{ApprovalDecided, ApprovalRequested, EventData, derived_id};
use automation_shared::lifecycle::{ApprovalStatus, Decision};
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use garde::Validate;
use serde::Deserialize;
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

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListApprovals {
    #[garde(skip)]
    #[param(value_type = Option<String>, example = "PENDING")]
    pub status: Option<ApprovalStatus>,
    #[garde(skip)]
    pub workflow_id: Option<Uuid>,
    #[garde(skip)]
    pub requester_id: Option<Uuid>,
    /// 1 to 500 (default 50).
    #[garde(range(min = 1, max = 500))]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// From the `Link: rel="next"` header of the previous page.
    #[garde(skip)]
    pub cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/approvals", tag = "approvals",
    security(("bearer" = [])),
    params(ListApprovals),
    responses(
        (status = 200, description = "Newest first; the next page is in the Link header", body = Vec<Approval>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A filter is malformed", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ValidQuery(query): ValidQuery<ListApprovals>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(approvals::SELECT, query.cursor.as_deref(), query.limit)?;
    list.and("status = ", query.status.map(ApprovalStatus::as_str))
        .and("workflow_id = ", query.workflow_id.map(|w| w.to_string()))
        .and("requester_id = ", query.requester_id.map(|r| r.to_string()));
    Ok(list.fetch(&state.pool, |a: &Approval| a.seq, "/approvals", raw.as_deref()).await?.into_response())
}

#[utoipa::path(
    get, path = "/approvals/{id}", tag = "approvals",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Approval id (UUID)")),
    responses(
        (status = 200, body = Approval),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Approval>> {
    user.require(Permission::Read)?;
    Ok(axum::Json(find(&state, &id).await?))
}

async fn find(state: &AppState, id: &str) -> ApiResult<Approval> {
    let uuid = parse_id(id, "approval")?;
    approvals::find(&state.pool, uuid).await?.ok_or_else(|| ApiError::NotFound(format!("no approval with id {uuid}")))
}

/// The largest amount an approval can hold. `approvals.amount` is `decimal(19, 4)`: 15 digits
/// before the point, so every amount must be below 10^15, and the largest `f64` below 10^15 is
/// 999,999,999,999,999.875 (this literal's shortest form). 10^15 itself fails in MySQL.
pub const MAX_AMOUNT: f64 = 999_999_999_999_999.9;
const _: () = assert!(MAX_AMOUNT < 1e15);

/// A JSON number as close to 10^15 as `999999999999999.99` is read as 10^15 itself, so the
/// message says where the limit is rather than repeating the number sent.
fn amount_fits(amount: &Option<f64>, _context: &()) -> garde::Result {
    match amount {
        Some(amount) if *amount < 0.0 => Err(garde::Error::new("must not be negative")),
        Some(amount) if *amount > MAX_AMOUNT => Err(garde::Error::new(
            "must be below 1000000000000000 (10^15): amounts are stored with 15 digits before the point",
        )),
        _ => Ok(()),
    }
}

/// What a requester sends. The requester is the caller; status, id and version are the
/// system's to set.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewApproval {
    #[garde(skip)]
    pub workflow_id: Uuid,
    #[garde(length(chars, min = 1, max = 300))]
    #[schema(min_length = 1, max_length = 300)]
    pub title: String,
    /// At least 0 and below 10^15 (`approvals.amount` is `decimal(19, 4)`).
    #[garde(custom(amount_fits))]
    #[schema(minimum = 0.0, exclusive_maximum = 1e15)]
    pub amount: Option<f64>,
    /// ISO 4217, e.g. `EUR`.
    #[garde(pattern(r"^[A-Z]{3}$"))]
    #[schema(pattern = r"^[A-Z]{3}$", example = "EUR")]
    pub currency: Option<String>,
    #[garde(skip)]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Map<String, Value>>,
}

#[utoipa::path(
    post, path = "/approvals", tag = "approvals",
    security(("bearer" = [])),
    request_body = NewApproval,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same user gives the same event: a retry is applied once"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the worker is done"),
    ),
    responses(
        (status = 200, description = "Applied (with Prefer: wait)", body = Approval),
        (status = 202, description = "Accepted: the broker confirmed the event", body = commands::Accepted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused by the worker (e.g. the workflow is not ACTIVE)", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The broker did not confirm; nothing was accepted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ValidJson(body): ValidJson<NewApproval>,
) -> ApiResult<Response> {
    user.require(Permission::RequestApproval)?;
    let requester = Uuid::parse_str(&user.id)
        .map_err(|_| ApiError::Forbidden("only users with a UUID id can request approvals".into()))?;
    if workflows::find(&state.pool, body.workflow_id).await?.is_none() {
        return Err(ApiError::field("workflowId", format!("no workflow with id {}", body.workflow_id)));
    }
    let event_id = commands::event_id(&state, &user, "POST /approvals", &headers).await?;
    let approval_id = derived_id("approval", &event_id);
    let data = EventData::ApprovalRequested(ApprovalRequested {
        approval_id: Some(approval_id),
        workflow_id: body.workflow_id,
        title: body.title,
        amount: body.amount,
        currency: body.currency,
        requester_id: requester,
        details: body.details,
    });
    let submitted = commands::submit(&state, &user, &headers, event_id, data).await?;
    Ok(respond(&state, submitted, approval_id).await)
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DecideApproval {
    /// `APPROVED` or `REJECTED`.
    #[garde(skip)]
    #[schema(value_type = String, example = "APPROVED")]
    pub status: Decision,
    #[garde(length(chars, max = 4000))]
    #[schema(max_length = 4000)]
    pub reason: Option<String>,
    /// Refuse the decision unless the approval is still at this version.
    #[garde(range(min = 1))]
    #[schema(minimum = 1)]
    pub expected_version: Option<u32>,
}

#[utoipa::path(
    patch, path = "/approvals/{id}", tag = "approvals",
    security(("bearer" = [])),
    request_body = DecideApproval,
    params(
        ("id" = String, Path, description = "Approval id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same user gives the same event"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the worker is done"),
    ),
    responses(
        (status = 200, description = "Decided (with Prefer: wait)", body = Approval),
        (status = 202, description = "Accepted: the broker confirmed the event", body = commands::Accepted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Refused: already decided, or a stale expectedVersion", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn decide(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    ValidJson(body): ValidJson<DecideApproval>,
) -> ApiResult<Response> {
    user.require(Permission::DecideApproval)?;
    let approval = find(&state, &id).await?;
    let event_id = commands::event_id(&state, &user, &format!("PATCH /approvals/{}", approval.id), &headers).await?;
    let data = EventData::ApprovalDecided(ApprovalDecided {
        approval_id: approval.id,
        status: body.status,
        reason: body.reason,
        expected_version: body.expected_version,
    });
    let submitted = commands::submit(&state, &user, &headers, event_id, data).await?;
    Ok(respond(&state, submitted, approval.id).await)
}

async fn respond(state: &AppState, submitted: Submitted, approval: Uuid) -> Response {
    submitted.respond(&format!("/approvals/{approval}"), approvals::find(&state.pool, approval)).await
}

#[cfg(test)]
mod tests {
    use super::MAX_AMOUNT;

    #[test]
    fn the_largest_amount_is_the_last_f64_below_ten_to_the_fifteen() {
        assert_eq!(MAX_AMOUNT.next_up(), 1e15, "nothing between the limit and what decimal(19, 4) refuses");
    }
}
