//! The audit log: list with filters, and `POST /auditLogs` (`audit.recorded`) for services.

use automation_shared::db::audit::{self, AuditRecord};
use automation_shared::events::{AuditRecorded, EventData};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use garde::Validate;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::commands::{self, CommandHeaders};
use crate::extract::{ListQuery, ValidJson};
use crate::openapi::responses::{JsonBody, Listing, Publishing, Secured};
use crate::pagination::{Keyset, Paging};
use crate::problem::ApiResult;

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
}

/// List audit records
///
/// Newest first, narrowed by the filters given; paged by `limit` and `cursor`.
#[utoipa::path(
    get, path = "/auditLogs", tag = "audit", operation_id = "listAuditLogs",
    security(("bearer" = [])),
    params(ListAudit, Paging),
    responses(
        (status = 200, description = "A page of audit records, newest first; the next page is in the `Link` header", body = Vec<AuditRecord>),
        Secured, Listing,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ListQuery(query, paging): ListQuery<ListAudit>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(audit::SELECT, &paging)?;
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
    pub details: Option<Map<String, Value>>,
}

/// Record an audit entry
///
/// Publishes `audit.recorded` (services and admins).
#[utoipa::path(
    post, path = "/auditLogs", tag = "audit", operation_id = "recordAuditLog",
    security(("bearer" = [])),
    request_body(content = NewAuditRecord, example = json!({
        "entity": "invoice", "entityId": "INV-2026-0042", "action": "exported", "details": {"format": "pdf"}
    })),
    params(CommandHeaders),
    responses(
        (status = 200, description = "Recorded (with `Prefer: wait`): the audit record", body = AuditRecord),
        Secured, JsonBody, Publishing,
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
