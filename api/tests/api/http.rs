//! HTTP hygiene: CORS, request ids, problem+json for unknown routes, the OpenAPI document.

use automation_shared::testing::TestEnv;
use reqwest::Method;

use crate::support::{TestApi, json};

#[tokio::test]
async fn cors_answers_listed_origins_with_credentials_and_never_echoes_others() {
    let mut env = TestEnv::new().await;
    env.config.api.cors_origins = vec!["https://app.example.com".into()];
    let api = TestApi::start(&env.config).await;
    let preflight = |origin: &'static str| {
        api.client
            .request(Method::OPTIONS, api.url("/approvals"))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header("access-control-request-headers", "authorization,content-type,idempotency-key")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.expect("answer");
    let headers = allowed.headers();
    assert_eq!(
        headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.example.com")
    );
    assert_eq!(headers.get("access-control-allow-credentials").and_then(|v| v.to_str().ok()), Some("true"));
    let evil = preflight("https://evil.example.net").await.expect("answer");
    assert!(evil.headers().get("access-control-allow-origin").is_none(), "an unlisted origin is not echoed");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let r = api.client.get(api.url("/health")).send().await.expect("answer");
    assert!(r.headers().get("x-request-id").is_some());
    let r = api.client.get(api.url("/health")).header("x-request-id", "trace-me-42").send().await.expect("answer");
    assert_eq!(r.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("trace-me-42"));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problem_json() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let r = api.client.get(api.url("/nope")).send().await.expect("answer");
    assert_eq!(r.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"));
    let (status, problem) = json(r).await;
    assert_eq!((status, problem["status"].as_u64()), (404, Some(404)));
    let (status, _) = json(api.client.delete(api.url("/approvals")).send().await.expect("answer")).await;
    assert_eq!(status, 405);
    let (status, _) = json(api.client.get(api.url("/approvals")).send().await.expect("answer")).await;
    assert_eq!(status, 401, "reads need a token");
}

#[tokio::test]
async fn the_openapi_document_and_the_docs_are_served() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let (status, doc) = json(api.client.get(api.url("/openapi.json")).send().await.expect("answer")).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap_or_default().starts_with("3.1"), "{}", doc["openapi"]);
    for path in ["/approvals/{id}", "/auth/login", "/api/v1/events", "/auditLogs", "/health/ready"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // What clients generate from in review is what is served.
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/openapi.json"))
        .expect("schemas/openapi.json");
    let committed: serde_json::Value = serde_json::from_str(&committed).expect("JSON");
    assert!(doc == committed, "GET /openapi.json differs from schemas/openapi.json: run `make schemas`");
    // The root says what this is and where the docs are.
    let (status, home) = json(api.client.get(api.url("/")).send().await.expect("answer")).await;
    assert_eq!(status, 200, "{home}");
    assert_eq!((home["name"].as_str(), home["docs"].as_str()), (Some("automation-engine"), Some("/docs")));
    let redoc = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(api.url("/redoc"))
        .send()
        .await
        .expect("answer");
    assert_eq!(redoc.status(), 308, "the seed's /redoc leads to the docs");
    assert_eq!(redoc.headers().get("location").and_then(|l| l.to_str().ok()), Some("/docs/"));
    let docs = api.client.get(api.url("/docs/")).send().await.expect("answer");
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap_or_default().contains("swagger"), "the docs UI is served (vendored)");
    let (status, info) = json(api.client.get(api.url("/api/v1/info")).send().await.expect("answer")).await;
    assert_eq!(status, 200);
    assert_eq!(info["name"], "automation-engine");
}

#[tokio::test]
async fn every_metric_has_help_and_promtool_finds_nothing_wrong() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    // A request of each kind first, so the labelled families exist.
    let _ = api.client.get(api.url("/health")).send().await.expect("answer");
    let _ = api.client.get(api.url("/no/such/route")).send().await.expect("answer");
    // The readiness gauge follows the last readiness answer (the kubelet's probe).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !api.client.get(api.url("/health/ready")).send().await.expect("answer").status().is_success() {
        assert!(tokio::time::Instant::now() < deadline, "the API never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let scrape = api.client.get(api.url("/metrics")).send().await.expect("answer").text().await.expect("text");
    assert!(scrape.contains("automation_build_info{binary=\"automation-api\""), "{scrape}");
    assert!(scrape.contains("automation_ready 1"), "ready after a 200 from /health/ready:\n{scrape}");
    for series in ["automation_broker_connected ", "automation_db_pool_connections{state=\"idle\"}"] {
        assert!(scrape.contains(series), "{series} is read from the start:\n{scrape}");
    }
    let types = scrape.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let helps = scrape.lines().filter(|l| l.starts_with("# HELP ")).count();
    assert_eq!(types, helps, "every family has HELP:\n{scrape}");
    assert_eq!(automation_shared::testing::promtool_check(&scrape), "", "promtool check metrics:\n{scrape}");
}
