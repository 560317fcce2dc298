//! The audit log: list with filters, and `POST /auditLogs` (`audit.recorded`) for services.

use automation_shared::db::audit::{self, AuditRecord};
use automation_shared::events::{AuditRecorded, EventData};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use garde::Validate;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::commands;
use crate::extract::{ValidJson, ValidQuery};
use crate::pagination::Keyset;
use crate::problem::{ApiResult, Problem};

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListAudit {
    /// e.g. `approval`, `workflow`, `rule`, `event`.
    #[garde(length(max = 64))]
    pub entity: Option<String>,
    #[garde(length(max = 64))]
    pub entity_id: Option<String>,
    #[garde(length(max = 64))]
    pub actor_id: Option<String>,
    /// Records at or after this time (RFC 3339).
    #[garde(skip)]
    pub since: Option<DateTime<Utc>>,
    /// Records before this time (RFC 3339).
    #[garde(skip)]
    pub until: Option<DateTime<Utc>>,
    #[garde(range(min = 1, max = 500))]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[garde(skip)]
    pub cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/auditLogs", tag = "audit",
    security(("bearer" = [])),
    params(ListAudit),
    responses(
        (status = 200, description = "Newest first; the next page is in the Link header", body = Vec<AuditRecord>),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ValidQuery(query): ValidQuery<ListAudit>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(audit::SELECT, query.cursor.as_deref(), query.limit)?;
    list.and("entity = ", query.entity)
        .and("entity_id = ", query.entity_id)
        .and("actor_id = ", query.actor_id)
        .and("created_at >= ", query.since)
        .and("created_at < ", query.until);
    Ok(list.fetch(&state.pool, |r: &AuditRecord| r.seq, "/auditLogs", raw.as_deref()).await?.into_response())
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewAuditRecord {
    #[garde(length(chars, min = 1, max = 64), pattern(r"^[A-Za-z][A-Za-z0-9_.-]*$"))]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z][A-Za-z0-9_.-]*$")]
    pub entity: String,
    #[garde(length(chars, min = 1, max = 64))]
    #[schema(min_length = 1, max_length = 64)]
    pub entity_id: String,
    #[garde(length(chars, min = 1, max = 64))]
    #[schema(min_length = 1, max_length = 64)]
    pub action: String,
    #[garde(skip)]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

#[utoipa::path(
    post, path = "/auditLogs", tag = "audit",
    security(("bearer" = [])),
    request_body = NewAuditRecord,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "The same key from the same caller gives the same event"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): answer when the worker is done"),
    ),
    responses(
        (status = 200, description = "Recorded (with Prefer: wait)", body = AuditRecord),
        (status = 202, description = "Accepted: the broker confirmed the event", body = commands::Accepted),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ValidJson(body): ValidJson<NewAuditRecord>,
) -> ApiResult<Response> {
    user.require(Permission::WriteAudit)?;
    let event_id = commands::event_id(&state, &user, "POST /auditLogs", &headers).await?;
    let location = form_urlencoded::Serializer::new(String::from("/auditLogs?"))
        .append_pair("entity", &body.entity)
        .append_pair("entityId", &body.entity_id)
        .finish();
    let data = EventData::AuditRecorded(AuditRecorded {
        entity: body.entity,
        entity_id: body.entity_id,
        action: body.action,
        details: body.details,
    });
    let submitted = commands::submit(&state, &user, &headers, event_id.clone(), data).await?;
    let record = async { Ok(audit::for_event(&state.pool, &event_id).await?.into_iter().next()) };
    Ok(submitted.respond(&location, record).await)
}
