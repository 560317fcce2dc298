//! Rules (CONTRACT §6): `/api/v1/rules` to list, read, create, replace and delete (written through
//! `rule.upserted` and `rule.deleted`), and `POST /api/v1/rules/test`, a dry run with the trace and
//! the events the rule would ask for, changing nothing.

use automation_shared::db::rules::{self as rule_rows, Rule};
use automation_shared::db::{approvals, workflows};
use automation_shared::events::{EventData, EventType, RuleDeleted, derived_id};
use automation_shared::rules::engine::{self, ConditionCache, Evaluation, StoredRule};
use automation_shared::rules::{self, RuleDefinition};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use garde::Validate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::parse_id;
use crate::app::AppState;
use crate::auth::{AuthUser, Permission};
use crate::commands::{self, CommandHeaders, Submitted};
use crate::extract::{JsonBytes, ListQuery, parse_json, validate};
use crate::openapi::responses::{JsonBody, Listing, Lookup, Publishing, Secured};
use crate::pagination::{Keyset, Paging};
use crate::problem::{ApiError, ApiResult, FieldError};

/// The fields a rule may carry: anything else is refused, so no client sets `version` or dates.
const RULE_FIELDS: [&str; 9] =
    ["id", "name", "description", "enabled", "priority", "on", "when", "then", "stopOnMatch"];

/// Reads a rule body: known fields only, valid, and with a condition that compiles.
fn read_rule(body: &[u8], at: &str) -> ApiResult<RuleDefinition> {
    let value: Value = parse_json(body)?;
    read_rule_value(&value, at)
}

fn read_rule_value(value: &Value, at: &str) -> ApiResult<RuleDefinition> {
    let prefixed = |field: &str| if at.is_empty() { field.to_string() } else { format!("{at}.{field}") };
    let Some(object) = value.as_object() else {
        return Err(ApiError::field(at, "must be a JSON object"));
    };
    if let Some(unknown) = object.keys().find(|k| !RULE_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::field(prefixed(unknown), "unknown field"));
    }
    let rule: RuleDefinition = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ApiError::field(
            prefixed(if path == "." { "" } else { &path }).trim_end_matches('.'),
            e.into_inner().to_string(),
        )
    })?;
    validate(&rule).map_err(|error| match error {
        ApiError::Validation(errors) => ApiError::Validation(
            errors.into_iter().map(|e| FieldError { field: prefixed(&e.field), message: e.message }).collect(),
        ),
        other => other,
    })?;
    rule.check().map_err(|message| {
        let (field, message) =
            message.split_once(": ").map_or((prefixed("when"), message.clone()), |(f, m)| (prefixed(f), m.to_string()));
        ApiError::field(field, message)
    })?;
    Ok(rule)
}

#[derive(Debug, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListRules {
    #[garde(skip)]
    pub enabled: Option<bool>,
}

/// List rules
///
/// Optionally only the enabled (or disabled) ones; paged by `limit` and `cursor`.
#[utoipa::path(
    get, path = "/api/v1/rules", tag = "rules", operation_id = "listRules",
    security(("bearer" = [])),
    params(ListRules, Paging),
    responses(
        (status = 200, description = "A page of rules; the next page is in the `Link` header", body = Vec<Rule>),
        Secured, Listing,
    )
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ListQuery(query, paging): ListQuery<ListRules>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    user.require(Permission::Read)?;
    let mut list = Keyset::new(rule_rows::SELECT, &paging)?;
    list.and("enabled = ", query.enabled);
    Ok(list.fetch(&state.pool, |r: &Rule| r.seq, "/api/v1/rules", raw.as_deref()).await?.into_response())
}

/// Get a rule
///
/// The rule with its `version`.
#[utoipa::path(
    get, path = "/api/v1/rules/{id}", tag = "rules", operation_id = "getRule",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Rule id (UUID)")),
    responses(
        (status = 200, description = "The rule", body = Rule),
        Secured, Lookup,
    )
)]
pub async fn get(State(state): State<AppState>, user: AuthUser, Path(id): Path<String>) -> ApiResult<Json<Rule>> {
    user.require(Permission::Read)?;
    let id = parse_id(&id, "rule")?;
    rule_rows::find(&state.pool, id).await?.map(Json).ok_or_else(|| ApiError::NotFound(format!("no rule with id {id}")))
}

const RULE_BODY: &str = "A rule: {name, description?, enabled?, priority?, on, when, then, stopOnMatch?}. `when` is a CEL \
                         condition over `event` and `entity`; an invalid one is refused with the compiler's message.";

/// Create a rule
///
/// Publishes `rule.upserted`; a condition that does not compile is refused at once (422).
#[utoipa::path(
    post, path = "/api/v1/rules", tag = "rules", operation_id = "createRule",
    security(("bearer" = [])),
    request_body(content = Object, description = RULE_BODY, example = json!({
        "name": "Small purchases are approved", "on": "approval.requested",
        "when": "event.data.amount < 100.0", "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "under 100"}],
        "priority": 10
    })),
    params(CommandHeaders),
    responses(
        (status = 200, description = "Stored (with `Prefer: wait`): the rule", body = Rule),
        Secured, JsonBody, Publishing,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Response> {
    user.require(Permission::ManageRules)?;
    let mut rule = read_rule(&body, "")?;
    let event_id = commands::event_id(&state, &user, "POST /api/v1/rules", &headers).await?;
    let id = *rule.id.get_or_insert_with(|| derived_id("rule", &event_id));
    upsert(&state, &user, &headers, event_id, id, rule).await
}

/// Replace a rule
///
/// Publishes `rule.upserted` for this id: the rule as sent replaces the stored one.
#[utoipa::path(
    put, path = "/api/v1/rules/{id}", tag = "rules", operation_id = "replaceRule",
    security(("bearer" = [])),
    request_body(content = Object, description = RULE_BODY, example = json!({
        "name": "Small purchases are approved", "on": "approval.requested",
        "when": "event.data.amount < 100.0", "then": [{"type": "approval.decide", "status": "APPROVED", "reason": "under 100"}],
        "priority": 10
    })),
    params(("id" = String, Path, description = "Rule id (UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "Stored (with `Prefer: wait`): the rule", body = Rule),
        Secured, Lookup, JsonBody, Publishing,
    )
)]
pub async fn replace(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Response> {
    user.require(Permission::ManageRules)?;
    let id = parse_id(&id, "rule")?;
    let mut rule = read_rule(&body, "")?;
    if rule.id.is_some_and(|given| given != id) {
        return Err(ApiError::field("id", "differs from the id in the path"));
    }
    rule.id = Some(id);
    let event_id = commands::event_id(&state, &user, &format!("PUT /api/v1/rules/{id}"), &headers).await?;
    upsert(&state, &user, &headers, event_id, id, rule).await
}

/// Delete a rule
///
/// Publishes `rule.deleted`. Answers 202 whether or not a `Prefer: wait` saw it done: there is
/// nothing left to show.
#[utoipa::path(
    delete, path = "/api/v1/rules/{id}", tag = "rules", operation_id = "deleteRule",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Rule id (UUID)"), CommandHeaders),
    responses(Secured, Lookup, Publishing)
)]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    user.require(Permission::ManageRules)?;
    let id = parse_id(&id, "rule")?;
    if rule_rows::find(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no rule with id {id}")));
    }
    let event_id = commands::event_id(&state, &user, &format!("DELETE /api/v1/rules/{id}"), &headers).await?;
    let data = EventData::RuleDeleted(RuleDeleted { rule_id: id });
    // There is nothing left to show: 202 whether or not the wait saw it done.
    match commands::submit(&state, &user, &headers, event_id, data).await? {
        Submitted::Accepted { event_id } | Submitted::Applied { event_id } => Ok(commands::accepted(&event_id)),
    }
}

/// Publishes `rule.upserted` for rule `id` (already set in `rule`), and answers for it.
async fn upsert(
    state: &AppState,
    user: &AuthUser,
    headers: &HeaderMap,
    event_id: String,
    id: Uuid,
    rule: RuleDefinition,
) -> ApiResult<Response> {
    let submitted = commands::submit(state, user, headers, event_id, EventData::RuleUpserted(rule)).await?;
    Ok(submitted.respond(&format!("/api/v1/rules/{id}"), rule_rows::find(&state.pool, id)).await)
}

/// What a dry run returns.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    /// Did any rule match?
    pub matched: bool,
    /// Each rule evaluated: matched or not, and why.
    #[schema(value_type = Vec<Object>)]
    pub evaluations: Vec<Evaluation>,
    /// The follow-up events the matching rules would publish (`{type, data}`), or why an action
    /// does not apply (`{action, skipped}`).
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<Value>,
    /// The entity the condition saw.
    #[schema(value_type = Object)]
    pub entity: Value,
}

/// Dry-run a rule
///
/// Evaluates a rule (given, or stored by `ruleId`) on an event: matched or not, why, and the
/// actions it would take. Changes and publishes nothing.
#[utoipa::path(
    post, path = "/api/v1/rules/test", tag = "rules", operation_id = "testRule",
    security(("bearer" = [])),
    request_body(content = Object, description = "`{rule or ruleId, event: {type, data, ...}, entity?}`. Without `entity`, the one the \
                                                   event names is read from MySQL, or taken from the event's data for a new one."),
    responses(
        (status = 200, description = "The evaluation; nothing was changed or published", body = DryRun),
        Secured, Lookup, JsonBody,
    )
)]
pub async fn test(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBytes(body): JsonBytes,
) -> ApiResult<Json<DryRun>> {
    user.require(Permission::ManageRules)?;
    let request: Value = parse_json(&body)?;
    let Some(request) = request.as_object() else { return Err(ApiError::field("", "must be a JSON object")) };
    if let Some(unknown) = request.keys().find(|k| !["rule", "ruleId", "event", "entity"].contains(&k.as_str())) {
        return Err(ApiError::field(unknown.as_str(), "unknown field"));
    }
    let stored = match (request.get("rule"), request.get("ruleId")) {
        (Some(rule), None) => {
            let definition = read_rule_value(rule, "rule")?;
            StoredRule { id: definition.id.unwrap_or(Uuid::nil()), version: 0, definition }
        }
        (None, Some(id)) => {
            let id = id
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| ApiError::field("ruleId", "not a UUID"))?;
            rule_rows::find(&state.pool, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("no rule with id {id}")))?
                .to_stored()
        }
        _ => return Err(ApiError::field("rule", "give a rule or a ruleId (one of them)")),
    };
    let event = request.get("event").ok_or_else(|| ApiError::field("event", "required"))?;
    let type_name =
        event.get("type").and_then(Value::as_str).ok_or_else(|| ApiError::field("event.type", "required"))?;
    let event_type = EventType::parse(type_name)
        .ok_or_else(|| ApiError::field("event.type", format!("{type_name:?} is not a v1 event type")))?;
    let data = event.get("data").cloned().unwrap_or(json!({}));
    let decoded = EventData::decode(event_type, &data).map_err(|message| {
        let (field, message) = message
            .split_once(": ")
            .map_or(("event.data".to_string(), message.clone()), |(f, m)| (format!("event.{f}"), m.to_string()));
        ApiError::field(field, message)
    })?;
    let (kind, id, entity) = match request.get("entity") {
        Some(entity) => {
            (entity_kind(event_type).to_string(), entity["id"].as_str().unwrap_or_default().to_string(), entity.clone())
        }
        None => entity_of(&state, &decoded).await?,
    };
    let mut cloud_event =
        json!({"specversion": "1.0", "id": "dry-run", "source": "/api/v1/rules/test", "type": type_name, "data": data});
    for (key, value) in event.as_object().into_iter().flatten() {
        if !["type", "data"].contains(&key.as_str()) {
            cloud_event[key] = value.clone();
        }
    }
    // Off the async executor: the budget bounds it, but no request's CEL should hold a runtime
    // thread the other requests need.
    let max_steps = state.config.rules.max_steps;
    let (type_name, cloud_event, entity) = (type_name.to_string(), cloud_event, entity);
    let (evaluations, matched_actions, entity) = tokio::task::spawn_blocking(move || {
        let (evaluations, actions) =
            engine::evaluate(&ConditionCache::default(), &[stored], &type_name, &cloud_event, &entity, max_steps);
        (evaluations, actions, entity)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("the dry run failed: {e}")))?;
    let actions = matched_actions
        .iter()
        .map(|(_, action)| match rules::plan(action, &kind, &id, &entity) {
            Ok((event_type, data)) => json!({"action": action.kind(), "type": event_type.as_str(), "data": data}),
            Err(why) => json!({"action": action.kind(), "skipped": why}),
        })
        .collect();
    Ok(Json(DryRun { matched: evaluations.iter().any(|e| e.matched), evaluations, actions, entity }))
}

fn entity_kind(event_type: EventType) -> &'static str {
    match event_type {
        EventType::WorkflowCreated | EventType::WorkflowStatusChanged => "workflow",
        EventType::ApprovalRequested | EventType::ApprovalDecided | EventType::ApprovalEscalate => "approval",
        EventType::RuleUpserted | EventType::RuleDeleted => "rule",
        EventType::AutomationRequested | EventType::AutomationCancelled => "automation_run",
        EventType::AuditRecorded => "audit",
    }
}

/// The entity an event names, as it is now (or, for a new one, as its data describes it).
async fn entity_of(state: &AppState, data: &EventData) -> ApiResult<(String, String, Value)> {
    Ok(match data {
        EventData::ApprovalDecided(d) => approval(state, d.approval_id).await?,
        EventData::ApprovalEscalate(d) => approval(state, d.approval_id).await?,
        EventData::ApprovalRequested(d) => {
            let id = d.approval_id.unwrap_or(Uuid::nil());
            let mut entity = serde_json::to_value(d).unwrap_or_default();
            entity["id"] = json!(id);
            entity["status"] = json!("PENDING");
            ("approval".into(), id.to_string(), entity)
        }
        EventData::WorkflowStatusChanged(d) => match workflows::find(&state.pool, d.workflow_id).await? {
            Some(w) => ("workflow".into(), w.id.to_string(), serde_json::to_value(&w).unwrap_or_default()),
            None => return Err(ApiError::field("event.data.workflowId", "no such workflow")),
        },
        EventData::WorkflowCreated(d) => {
            let id = d.workflow_id.unwrap_or(Uuid::nil());
            let mut entity = serde_json::to_value(d).unwrap_or_default();
            entity["id"] = json!(id);
            entity["status"] = json!(d.status.unwrap_or_default().status());
            ("workflow".into(), id.to_string(), entity)
        }
        other => (entity_kind(other.event_type()).into(), String::new(), other.to_value()),
    })
}

async fn approval(state: &AppState, id: Uuid) -> ApiResult<(String, String, Value)> {
    match approvals::find(&state.pool, id).await? {
        Some(a) => Ok(("approval".into(), a.id.to_string(), serde_json::to_value(&a).unwrap_or_default())),
        None => Err(ApiError::field("event.data.approvalId", "no such approval")),
    }
}
