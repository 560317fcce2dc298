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
use crate::commands::{self, CommandHeaders, Submitted};
use crate::extract::{ListQuery, ValidJson};
use crate::openapi::responses::{JsonBody, Listing, Lookup, Publishing, Secured};
use crate::pagination::{Keyset, Paging};
use crate::problem::{ApiError, ApiResult};

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListApprovals {
    #[garde(skip)]
    #[param(inline, example = "PENDING")]
    pub status: Option<ApprovalStatus>,
    #[garde(skip)]
    pub workflow_id: Option<Uuid>,
    #[garde(skip)]
    pub requester_id: Option<Uuid>,
}

/// List approvals
///
/// Newest first, narrowed by the filters given; paged by `limit` and `cursor`.
#[utoipa::path(
    get, path = "/approvals", tag = "approvals", operation_id = "listApprovals",
    security(("bearer" = [])),
    params(ListApprovals, Paging),
    responses(
        (status = 200, description = "A page of approvals, newest first; the next page is in the `Link` header", body = Vec<Approval>),
        Secured, Listing,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ListQuery(query, paging): ListQuery<ListApprovals>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(approvals::SELECT, &paging)?;
    list.and("status = ", query.status.map(ApprovalStatus::as_str))
        .and("workflow_id = ", query.workflow_id.map(|w| w.to_string()))
        .and("requester_id = ", query.requester_id.map(|r| r.to_string()));
    Ok(list.fetch(&state.pool, |a: &Approval| a.seq, "/approvals", raw.as_deref()).await?.into_response())
}

/// Get an approval
///
/// The approval as it is now, with its `version`.
#[utoipa::path(
    get, path = "/approvals/{id}", tag = "approvals", operation_id = "getApproval",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Approval id (UUID)")),
    responses(
        (status = 200, description = "The approval", body = Approval),
        Secured, Lookup,
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

/// Request an approval
///
/// Publishes `approval.requested` with the caller as requester. The workflow must be `ACTIVE`
/// when the worker applies it (else 409 `workflow_not_active` with `Prefer: wait`).
#[utoipa::path(
    post, path = "/approvals", tag = "approvals", operation_id = "requestApproval",
    security(("bearer" = [])),
    request_body(content = NewApproval, example = json!({
        "workflowId": "0190f7a2-5c1e-7c3a-9a41-3f8e2b6d1c20", "title": "New laptop for Ada",
        "amount": 1899.0, "currency": "EUR", "details": {"costCenter": "R&D-7"}
    })),
    params(CommandHeaders),
    responses(
        (status = 200, description = "Applied (with `Prefer: wait`): the new approval", body = Approval),
        Secured, JsonBody, Publishing,
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
    pub status: Decision,
    #[garde(length(chars, max = 4000))]
    #[schema(max_length = 4000)]
    pub reason: Option<String>,
    /// Refuse the decision unless the approval is still at this version.
    #[garde(range(min = 1))]
    #[schema(minimum = 1)]
    pub expected_version: Option<u32>,
}

/// Decide an approval
///
/// Publishes `approval.decided`. With `expectedVersion` the decision is refused (409
/// `version_conflict`) unless the approval is still at that version; an approval already
/// decided is refused (409 `invalid_transition`).
#[utoipa::path(
    patch, path = "/approvals/{id}", tag = "approvals", operation_id = "decideApproval",
    security(("bearer" = [])),
    request_body(content = DecideApproval, example = json!({"status": "APPROVED", "reason": "Within budget", "expectedVersion": 1})),
    params(("id" = String, Path, description = "Approval id (UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "Decided (with `Prefer: wait`): the approval after the decision", body = Approval),
        Secured, Lookup, JsonBody, Publishing,
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
    let approval = parse_id(&id, "approval")?;
    if !exists(&state, approval).await? {
        return Err(ApiError::NotFound(format!("no approval with id {approval}")));
    }
    let event_id = commands::event_id(&state, &user, &format!("PATCH /approvals/{approval}"), &headers).await?;
    let data = EventData::ApprovalDecided(ApprovalDecided {
        approval_id: approval,
        status: body.status,
        reason: body.reason,
        expected_version: body.expected_version,
    });
    let submitted = commands::submit(&state, &user, &headers, event_id, data).await?;
    Ok(respond(&state, submitted, approval).await)
}

/// Whether the approval exists, for the 404 of a decision: the worker reads the row itself, so
/// the unique key's index answers alone (no row read, nothing decoded).
async fn exists(state: &AppState, id: Uuid) -> sqlx::Result<bool> {
    let found: Option<i32> = sqlx::query_scalar("select 1 from approvals where id = ?")
        .bind(id.hyphenated())
        .fetch_optional(&state.pool)
        .await?;
    Ok(found.is_some())
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
