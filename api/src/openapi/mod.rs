//! The OpenAPI 3.1 document, gathered from the handlers' annotations, served at `/openapi.json`
//! with the docs UI at `/docs`.

pub mod responses;

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Ref, RefOr, Type};
use utoipa::{IntoParams, OpenApi, ToResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::login;
use crate::pagination::Paging;
use crate::routes::{
    approvals, audit_logs, automation, dead_letters, events, health, insights, rules, users, workflows,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "automation-engine API",
        description = "Authenticates callers, validates commands and publishes them as events; reads come from MySQL. \
                       Writes answer 202 once the broker confirmed the event (or 200 with `Prefer: wait=N` once the \
                       worker applied it). Errors are RFC 9457 problem+json. Every response carries `X-Request-Id`.",
        contact(name = "automation-engine maintainers", url = "https://automation-engine.dev"),
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers(
        (url = "http://localhost:8000", description = "`make run` on this machine"),
        (url = "{origin}", description = "A deployment: its scheme, host and port", variables(
            ("origin" = (default = "http://localhost:8000", description = "e.g. https://automation.example.com"))
        )),
    ),
    components(responses(
        responses::BadRequest, responses::Unauthorized, responses::Forbidden, responses::NotFound,
        responses::RequestTimeout, responses::Refused, responses::PayloadTooLarge, responses::UnsupportedMediaType,
        responses::ValidationFailed, responses::TooManyRequests, responses::InternalError, responses::Unavailable,
        responses::EventAccepted,
    )),
    tags(
        (name = "auth", description = "Login and logout"),
        (name = "approvals", description = "Approval requests and their decisions"),
        (name = "workflows", description = "Workflows and their status"),
        (name = "audit", description = "The audit log"),
        (name = "events", description = "CloudEvents over HTTP, and what became of an event"),
        (name = "users", description = "User accounts (admins)"),
        (name = "rules", description = "Business rules (CEL) and their dry run"),
        (name = "automation", description = "Named background tasks and their runs"),
        (name = "insights", description = "Insights derived from the data"),
        (name = "dead letters", description = "The dead-letter store (admins)"),
        (name = "health", description = "Probes, build information, metrics"),
    )
)]
struct ApiDoc;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::live))
        .routes(routes!(health::live_alias))
        .routes(routes!(health::live_v1))
        .routes(routes!(health::ready))
        .routes(routes!(health::ready_alias))
        .routes(routes!(health::info))
        .routes(routes!(health::home))
        .routes(routes!(health::metrics))
        .routes(routes!(login::login))
        .routes(routes!(login::logout))
        .routes(routes!(users::list, users::create_user))
        .routes(routes!(approvals::list, approvals::create))
        .routes(routes!(approvals::get, approvals::decide))
        .routes(routes!(workflows::list, workflows::create))
        .routes(routes!(workflows::get, workflows::change))
        .routes(routes!(audit_logs::list, audit_logs::create))
        .routes(routes!(events::publish))
        .routes(routes!(events::status))
        .routes(routes!(rules::list, rules::create))
        .routes(routes!(rules::get, rules::replace, rules::delete))
        .routes(routes!(rules::test))
        .routes(routes!(automation::execute))
        .routes(routes!(automation::list))
        .routes(routes!(automation::get))
        .routes(routes!(automation::cancel))
        .routes(routes!(insights::latest))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::get))
        .routes(routes!(dead_letters::replay))
        .routes(routes!(dead_letters::discard))
}

/// The header every response carries.
const REQUEST_ID: &str = "X-Request-Id";
/// The header that links a list page to the next.
const LINK: &str = "Link";

/// Adds what the annotations cannot say once for all: the version, the bearer scheme, the
/// paging parameters as components, the problems the middleware can answer for any operation
/// (408 past the request timeout, 500), `X-Request-Id` on every response and `Link` on every
/// page of a list.
pub fn finish(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
    );
    components.headers.insert(
        REQUEST_ID.into(),
        RefOr::T(header("The request's id: the one sent in `X-Request-Id`, or a new one. Logs and traces carry it.")),
    );
    components.headers.insert(
        LINK.into(),
        RefOr::T(header(
            "`<...>; rel=\"next\"`: the next page, present while there may be more. Follow it as it is; \
             the cursor in it is opaque.",
        )),
    );
    rule_bodies(&mut api);
    let components = api.components.get_or_insert_with(Default::default);
    let paging = Paging::into_params(|| Some(ParameterIn::Query));
    let paging_names: Vec<String> = paging.iter().map(|p| p.name.clone()).collect();
    for parameter in paging {
        components.parameters.insert(parameter.name.clone(), RefOr::T(parameter));
    }
    for response in components.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(REQUEST_ID.into(), reference("headers", REQUEST_ID));
        }
    }
    for item in api.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let paged = refer_to_paging(operation, &paging_names);
            for (status, name) in
                [("408", responses::RequestTimeout::response().0), ("500", responses::InternalError::response().0)]
            {
                operation.responses.responses.entry(status.into()).or_insert_with(|| reference("responses", name));
            }
            for (status, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(response) = response {
                    response.headers.insert(REQUEST_ID.into(), reference("headers", REQUEST_ID));
                    if paged && status == "200" {
                        response.headers.insert(LINK.into(), reference("headers", LINK));
                    }
                }
            }
        }
    }
    api
}

/// The rule a client sends to `createRule` and `replaceRule` is the
/// worker's `RuleDefinition`, whose JSON Schema comes from its Rust type (schemars): registered
/// as a component, so a generated client types rule bodies as the worker reads them.
fn rule_bodies(api: &mut utoipa::openapi::OpenApi) {
    let Ok(schema) = serde_json::from_value::<RefOr<utoipa::openapi::schema::Schema>>(rule_definition()) else {
        return;
    };
    api.components.get_or_insert_with(Default::default).schemas.insert(RULE_DEFINITION.into(), schema);
    for item in api.paths.paths.values_mut() {
        for operation in [&mut item.post, &mut item.put].into_iter().flatten() {
            if !matches!(operation.operation_id.as_deref(), Some("createRule" | "replaceRule")) {
                continue;
            }
            if let Some(RefOr::T(body)) = operation.request_body.as_mut() {
                for content in body.content.values_mut() {
                    if let RefOr::T(content) = content {
                        content.schema = Some(reference("schemas", RULE_DEFINITION));
                    }
                }
            }
        }
    }
}

/// The JSON Schema of a rule as clients send it, with `const` written as an `enum` of one value
/// (utoipa's schema model has no `const`; generators read both alike), and a member's `default`
/// said in its description: in a request body a member with a default may be left out, but
/// openapi-typescript makes every member with a `default` required.
fn rule_definition() -> serde_json::Value {
    fn const_as_enum(schema: &mut serde_json::Value) {
        match schema {
            serde_json::Value::Object(object) => {
                if let Some(value) = object.remove("const") {
                    object.insert("enum".into(), serde_json::Value::Array(vec![value]));
                }
                if let Some(value) = object.remove("default") {
                    let said = object.get("description").and_then(serde_json::Value::as_str).unwrap_or_default();
                    let said = format!("{said} Default: `{value}`.").trim_start().to_string();
                    object.insert("description".into(), serde_json::Value::String(said));
                }
                object.values_mut().for_each(const_as_enum);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(const_as_enum),
            _ => {}
        }
    }
    let mut schema = automation_shared::events::schema::inlined::<automation_shared::rules::RuleDefinition>();
    const_as_enum(&mut schema);
    schema
}

/// The component name of a rule as clients send it.
const RULE_DEFINITION: &str = "RuleDefinition";

/// Replaces the operation's paging parameters by references to the components; true when it
/// had them (it is a list).
fn refer_to_paging(operation: &mut Operation, names: &[String]) -> bool {
    let mut paged = false;
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(p) = parameter
            && p.parameter_in == ParameterIn::Query
            && names.contains(&p.name)
        {
            *parameter = reference("parameters", &p.name.clone());
            paged = true;
        }
    }
    paged
}

fn header(description: &str) -> Header {
    HeaderBuilder::new()
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .description(Some(description))
        .build()
}

fn reference<T>(kind: &str, name: &str) -> RefOr<T> {
    RefOr::Ref(Ref::new(format!("#/components/{kind}/{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automation_shared::events::{EventState, RejectCode};
    use serde_json::{Value, json};

    fn schemas() -> Value {
        document()["components"]["schemas"].take()
    }

    /// The committed `schemas/openapi.json` is what the handlers document, so a change to the
    /// interface shows in review. `UPDATE_SCHEMAS=1` (or `make schemas`) rewrites it.
    /// Nothing of the rule's schema is lost on its way into the document (utoipa's model of a
    /// schema has to hold every keyword schemars wrote), and the rule routes refer to it.
    #[test]
    fn rule_bodies_are_the_worker_s_rule_definition() {
        let document = document();
        assert_eq!(document["components"]["schemas"][RULE_DEFINITION], rule_definition());
        let kinds: Vec<&Value> =
            document["components"]["schemas"][RULE_DEFINITION]["properties"]["then"]["items"]["oneOf"]
                .as_array()
                .expect("one schema per action")
                .iter()
                .map(|action| &action["properties"]["type"]["enum"][0])
                .collect();
        assert_eq!(kinds.len(), 5, "each action names its type: {kinds:?}");
        assert!(kinds.iter().all(|k| k.is_string()), "{kinds:?}");
        for (path, method) in [("/api/v1/rules", "post"), ("/api/v1/rules/{id}", "put")] {
            assert_eq!(
                document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
                format!("#/components/schemas/{RULE_DEFINITION}"),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn committed_openapi_matches_the_handlers() {
        let (_, api) = routes().split_for_parts();
        let document = serde_json::to_string_pretty(&finish(api)).expect("serializes") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/openapi.json");
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &document).expect("write");
        } else {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(committed == document, "{} is stale: run `make schemas`", path.display());
        }
    }

    fn document() -> Value {
        let (_, api) = routes().split_for_parts();
        serde_json::to_value(finish(api)).expect("serializes")
    }

    /// What client generators need of every operation: a unique camelCase id (it becomes a
    /// function name), a tag, an explicit security requirement, and a described response for
    /// every problem it can answer.
    #[test]
    fn every_operation_has_a_unique_id_a_tag_security_and_its_problems() {
        let document = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("an item") {
                let at = format!("{method} {path}");
                let id = operation["operationId"].as_str().unwrap_or_default();
                assert!(
                    id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                        && id.chars().all(|c| c.is_ascii_alphanumeric()),
                    "{at}: operationId {id:?} is not camelCase"
                );
                assert!(ids.insert(id.to_string()), "{at}: operationId {id} is used twice");
                assert!(operation["tags"].as_array().is_some_and(|t| t.len() == 1), "{at}: one tag");
                let security = operation["security"].as_array().unwrap_or_else(|| panic!("{at}: no security"));
                let responses = operation["responses"].as_object().expect("responses");
                let has = |status: &str| responses.contains_key(status);
                if security.iter().any(|s| s.get("bearer").is_some()) {
                    assert!(has("401") && has("403") || path == "/auth/logout", "{at}: 401 and 403");
                }
                if operation.get("requestBody").is_some() {
                    assert!(has("400") && has("413") && has("415") && has("422"), "{at}: the problems of a JSON body");
                }
                assert!(has("408") && has("500"), "{at}: the problems any request can get");
                assert!(responses.keys().any(|s| s.starts_with('2')), "{at}: a success");
                for (status, response) in responses {
                    let described = response.get("$ref").is_some()
                        || response["description"].as_str().is_some_and(|d| !d.is_empty());
                    assert!(described, "{at} {status}: no description");
                    if response.get("$ref").is_none() {
                        assert!(response["headers"].get(REQUEST_ID).is_some(), "{at} {status}: no {REQUEST_ID}");
                    }
                }
            }
        }
        assert!(ids.contains("listApprovals") && ids.contains("decideApproval"), "{ids:?}");
    }

    #[test]
    fn lists_share_the_paging_parameters_and_say_where_the_next_page_is() {
        let document = document();
        let list = &document["paths"]["/approvals"]["get"];
        let refs: Vec<&str> =
            list["parameters"].as_array().expect("parameters").iter().filter_map(|p| p["$ref"].as_str()).collect();
        assert_eq!(refs, ["#/components/parameters/limit", "#/components/parameters/cursor"]);
        assert_eq!(list["responses"]["200"]["headers"][LINK]["$ref"], "#/components/headers/Link");
        assert_eq!(document["components"]["parameters"]["limit"]["schema"]["maximum"], 500);
        let accepted = &document["components"]["responses"]["EventAccepted"];
        assert!(accepted["headers"].get("Location").is_some(), "{accepted}");
        let unavailable = &document["components"]["responses"]["Unavailable"];
        assert!(unavailable["headers"].get("Retry-After").is_some(), "{unavailable}");
    }

    #[test]
    fn the_event_state_and_the_refusal_code_are_enums_of_the_names_sent() {
        let schemas = schemas();
        let states: Vec<&str> = EventState::ALL.iter().map(|s| s.as_str()).collect();
        let codes: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(schemas["EventState"]["enum"], json!(states));
        assert_eq!(schemas["RejectCode"]["enum"], json!(codes));
        assert_eq!(schemas["EventStatus"]["properties"]["status"]["$ref"], "#/components/schemas/EventState");
        let refs = |property: &Value| property["oneOf"][0]["$ref"].clone();
        assert_eq!(refs(&schemas["EventStatus"]["properties"]["reasonCode"]), "#/components/schemas/RejectCode");
        assert_eq!(refs(&schemas["Problem"]["properties"]["code"]), "#/components/schemas/RejectCode");
    }
}
