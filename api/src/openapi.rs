//! The OpenAPI 3.1 document, gathered from the handlers' annotations, served at `/openapi.json`
//! with the docs UI at `/docs`.

use utoipa::OpenApi;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::login;
use crate::routes::{
    approvals, audit_logs, automation, dead_letters, events, health, insights, rules, users, workflows,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "automation-engine API",
        description = "Authenticates callers, validates commands and publishes them as events; reads come from MySQL. \
                       Writes answer 202 once the broker confirmed the event (or 200 with `Prefer: wait=N` once the \
                       worker applied it). Errors are RFC 9457 problem+json.",
    ),
    tags(
        (name = "auth", description = "Login and logout"),
        (name = "approvals"), (name = "workflows"), (name = "audit"), (name = "events"), (name = "users"), (name = "rules", description = "Business rules (CEL) and their dry run"),
        (name = "automation", description = "Named background tasks and their runs"), (name = "insights"), (name = "dead letters", description = "The dead-letter store (admins)"),
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

/// Adds what the annotations cannot: the bearer scheme, the version, and the problems the
/// middleware can answer for any operation (408 past the request timeout; 413 and 415 for any
/// operation with a body), so no generated client is surprised by them.
pub fn finish(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    api.components.get_or_insert_with(Default::default).add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
    );
    for item in api.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            let mut add = |status: &str, description: &str| {
                operation.responses.responses.entry(status.to_string()).or_insert_with(|| problem(description));
            };
            add("408", "The request was not completed within the request timeout");
            if operation.request_body.is_some() {
                add("413", "The body is larger than the API accepts");
                add("415", "The body is not application/json (or application/...+json)");
            }
        }
    }
    api
}

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
            )
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use automation_shared::events::{EventState, RejectCode};
    use serde_json::{Value, json};

    fn schemas() -> Value {
        let (_, api) = routes().split_for_parts();
        serde_json::to_value(finish(api)).expect("serializes")["components"]["schemas"].take()
    }

    /// The committed `schemas/openapi.json` is what the handlers document, so a change to the
    /// interface shows in review. `UPDATE_SCHEMAS=1` (or `make schemas`) rewrites it.
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
