//! Issue 9, "Trust boundaries", at the API: claims of any shape in a signed token, amounts the
//! database cannot hold, framework-made errors, JSON content types, and the security headers.

use std::time::Duration;

use automation_api::auth::Role;
use automation_shared::testing::TestEnv;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApi, TestWorker, json};

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn content_type(response: &reqwest::Response) -> String {
    response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Asserts an RFC 9457 problem with this status, and gives it back.
async fn problem(response: reqwest::Response, status: u16, what: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "{what}: status");
    assert_eq!(content_type(&response), "application/problem+json", "{what}: content type");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(body["status"].as_u64(), Some(u64::from(status)), "{what}: {body}");
    for field in ["type", "title", "detail"] {
        assert!(body[field].as_str().is_some_and(|v| !v.is_empty()), "{what}: {field} in {body}");
    }
    body
}

#[tokio::test]
async fn a_signed_token_whose_jti_or_sub_cannot_be_stored_is_401_naming_the_claim_never_500() {
    let mut env = TestEnv::new().await;
    env.config.jwt.secret = Some(SECRET.into());
    let api = TestApi::start(&env.config).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let now = chrono::Utc::now().timestamp();
    let token = |jti: &str, sub: &str, exp: i64| {
        let claims = json!({"sub": sub, "role": "admin", "exp": exp, "iat": now, "nbf": now, "jti": jti,
                            "iss": "automation-engine", "aud": "automation-engine"});
        encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign")
    };
    let user = "5f0c8e0e-2b43-4c4e-9a51-0d1c2a0f7e11";
    let refused = [
        ("jti", token(&"é".repeat(10), user, now + 600), "a non-ASCII jti"),
        ("jti", token(&"x".repeat(100), user, now + 600), "a 100-character jti"),
        ("jti", token("", user, now + 600), "an empty jti"),
        ("jti", token("two words", user, now + 600), "a jti with a space"),
        ("jti", token("tab\there", user, now + 600), "a jti with a control character"),
        ("sub", token("fine-jti", &"u".repeat(100), now + 600), "a 100-character sub"),
    ];
    for (claim, token, what) in refused {
        for (method, path) in [(Method::GET, "/workflows"), (Method::POST, "/auth/logout")] {
            let r = api.request(method, path, &token).send().await.expect("answer");
            let body = problem(r, 401, &format!("{what} on {path}")).await;
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(&format!("{claim} claim")), "{what}: the problem names the claim: {detail}");
        }
    }

    // The edges that fit work, and can be logged out: 64 visible ASCII characters, a sub with
    // non-ASCII letters, and an exp past what MySQL's datetime holds.
    let longest = format!("{}~!", "J".repeat(62));
    for (jti, sub, exp) in [
        (longest.as_str(), user, now + 600),
        ("jti-with-a-sub-in-greek", "χρήστης", now + 600),
        ("jti-that-expires-in-2040", user, 2_240_000_000),
        ("jti-that-expires-in-year-33658", user, 1_000_000_000_000),
    ] {
        let token = token(jti, sub, exp);
        let (status, body) = json(api.request(Method::GET, "/workflows", &token).send().await.expect("answer")).await;
        assert_eq!(status, 200, "{jti}: {body}");
        let logout = api.request(Method::POST, "/auth/logout", &token).send().await.expect("answer");
        assert_eq!(logout.status(), 204, "{jti}: logout");
        let again = api.request(Method::GET, "/workflows", &token).send().await.expect("answer");
        assert_eq!(again.status(), 401, "{jti}: refused once logged out");
    }
}

#[tokio::test]
async fn an_amount_the_column_cannot_hold_is_422_and_the_largest_that_fits_is_stored() {
    let env = TestEnv::new().await;
    let worker = TestWorker::start(&env.config).await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let requester = api.user(Role::Requester).await;
    let (status, workflow) = json(
        api.request(Method::POST, "/workflows", &admin.token)
            .header("prefer", "wait=10")
            .json(&json!({"name": "Big purchases"}))
            .send()
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(status, 200, "{workflow}");
    let request = |amount: Value| {
        api.request(Method::POST, "/approvals", &requester.token)
            .header("prefer", "wait=10")
            .json(&json!({"workflowId": workflow["id"], "title": "A ship", "amount": amount, "currency": "EUR"}))
            .send()
    };
    // 10^15 has 16 digits before the point; decimal(19, 4) holds 15. So does anything that
    // parses to it (999999999999999.99 rounds up to 10^15 as a double).
    for amount in [json!(1e15), json!(1_000_000_000_000_000_u64), json!(999_999_999_999_999.99), json!(1e300)] {
        let body = problem(request(amount.clone()).await.expect("answer"), 422, &format!("amount {amount}")).await;
        assert_eq!(body["errors"][0]["field"], "amount", "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap_or_default().contains("below 1000000000000000"), "{body}");
    }
    let message = |body: &Value| body["errors"][0]["message"].as_str().unwrap_or_default().to_string();
    let body = problem(request(json!(-0.01)).await.expect("answer"), 422, "a negative amount").await;
    assert_eq!(message(&body), "must not be negative", "{body}");
    // The largest double below 10^15 (999999999999999.875), as JSON writes it.
    let largest = json!(999_999_999_999_999.9);
    let (status, approval) = json(request(largest).await.expect("answer")).await;
    assert_eq!(status, 200, "the largest amount below 10^15 is applied: {approval}");
    let stored = approval["amount"].as_f64().expect("amount");
    assert!((999_999_999_999_999.0..1e15).contains(&stored), "{stored}");
    let (status, _) = json(request(json!(0)).await.expect("answer")).await;
    assert_eq!(status, 200, "zero is an amount");
    worker.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_problem_json_on_every_route_that_reads_one() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    // 5 MiB of valid JSON, declared by Content-Length.
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    for (method, path) in [
        (Method::POST, "/api/v1/events"),
        (Method::POST, "/api/v1/rules"),
        (Method::PUT, "/api/v1/rules/5f0c8e0e-2b43-4c4e-9a51-0d1c2a0f7e11"),
        (Method::POST, "/api/v1/rules/test"),
        (Method::POST, "/workflows"),
        (Method::POST, "/auth/login"),
    ] {
        let r = api
            .request(method, path, &admin.token)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .expect("answer");
        let body = problem(r, 413, path).await;
        assert!(body["type"].as_str().unwrap_or_default().ends_with("/payload-too-large"), "{path}: {body}");
    }
}

/// Sends a request whose body never finishes, over a bare socket, and reads the answer.
async fn stalled_request(address: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let head = "POST /auth/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
                content-length: 100\r\n\r\n{\"email\":";
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buffer[..n]),
            _ => break,
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && body.trim_end().ends_with('}')
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn a_request_past_the_timeout_is_408_problem_json() {
    let mut env = TestEnv::new().await;
    env.config.api.request_timeout_secs = 1;
    let api = TestApi::start(&env.config).await;
    let (head, body) = stalled_request(api.base.trim_start_matches("http://")).await;
    assert!(head.starts_with("http/1.1 408"), "{head}");
    assert!(head.contains("content-type: application/problem+json"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    // The body may be chunked; the problem is the JSON object in it.
    let start = body.find('{').expect("a body");
    let end = body.rfind('}').expect("a whole body");
    let problem: Value = serde_json::from_str(&body[start..=end]).expect("problem JSON");
    assert_eq!(problem["status"], 408, "{problem}");
    assert!(problem["type"].as_str().unwrap_or_default().ends_with("/request-timeout"), "{problem}");
}

#[tokio::test]
async fn rejections_made_by_the_framework_are_problem_json() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let viewer = api.user(Role::Viewer).await;
    // A path parameter that is not UTF-8 once decoded: axum's own 400.
    let r = api.request(Method::GET, "/approvals/%FF%FE", &viewer.token).send().await.expect("answer");
    problem(r, 400, "a path that is not UTF-8").await;
    let r = api.request(Method::DELETE, "/approvals", &viewer.token).send().await.expect("answer");
    problem(r, 405, "an unknown method").await;
    let r = api.request(Method::GET, "/no/such/route", &viewer.token).send().await.expect("answer");
    problem(r, 404, "an unknown route").await;
    let r = api.request(Method::GET, "/docs/no-such-file.js", &viewer.token).send().await.expect("answer");
    problem(r, 404, "an unknown file of the docs").await;
    let r = api.request(Method::GET, "/approvals?limit=lots", &viewer.token).send().await.expect("answer");
    problem(r, 422, "a query parameter of the wrong type").await;
    let r = api
        .request(Method::POST, "/workflows", &viewer.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("answer");
    problem(r, 400, "a body that is not JSON").await;
    // Readiness keeps its own body: probes read `dependencies`.
    let r = api.client.get(api.url("/readiness")).send().await.expect("answer");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn only_application_json_and_plus_json_bodies_are_read_anything_else_is_415() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let routes = [
        (Method::POST, "/api/v1/events"),
        (Method::POST, "/api/v1/rules"),
        (Method::PUT, "/api/v1/rules/5f0c8e0e-2b43-4c4e-9a51-0d1c2a0f7e11"),
        (Method::POST, "/api/v1/rules/test"),
        (Method::POST, "/workflows"),
        (Method::POST, "/approvals"),
        (Method::POST, "/auditLogs"),
        (Method::POST, "/api/v1/automation/execute"),
        (Method::POST, "/auth/login"),
    ];
    // `text/plain` is a CORS "simple" type: a browser sends it cross-site without a preflight.
    for refused in [
        "text/plain; charset=json",
        "text/plain",
        "text/json",
        "application/x-www-form-urlencoded",
        "application/jsonp",
    ] {
        for (method, path) in &routes {
            let r = api
                .request(method.clone(), path, &admin.token)
                .header("content-type", refused)
                .body("{}")
                .send()
                .await
                .expect("answer");
            problem(r, 415, &format!("{refused} on {path}")).await;
        }
    }
    let r = api.request(Method::POST, "/api/v1/events", &admin.token).body("{}").send().await.expect("answer");
    problem(r, 415, "no content type").await;
    // Accepted types get as far as the body: `{}` is no event, rule or workflow (422).
    for accepted in
        ["application/json", "Application/JSON; charset=UTF-8", "application/cloudevents+json; charset=utf-8"]
    {
        for (method, path) in &routes[..5] {
            let r = api
                .request(method.clone(), path, &admin.token)
                .header("content-type", accepted)
                .body("{}")
                .send()
                .await
                .expect("answer");
            problem(r, 422, &format!("{accepted} on {path}")).await;
        }
    }
}

#[tokio::test]
async fn every_answer_says_nosniff_tokens_are_never_cached_and_the_docs_cannot_be_framed() {
    let env = TestEnv::new().await;
    let api = TestApi::start(&env.config).await;
    let admin = api.user(Role::Admin).await;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let login = api
        .client
        .post(api.url("/auth/login"))
        .json(&json!({"email": admin.email, "password": crate::support::PASSWORD}))
        .send()
        .await
        .expect("answer");
    assert_eq!(login.status(), 200);
    let users = api.request(Method::GET, "/users", &admin.token).send().await.expect("answer");
    let approvals = api.request(Method::GET, "/approvals", &admin.token).send().await.expect("answer");
    let refused = api.client.get(api.url("/users")).send().await.expect("answer");
    for (what, r) in [("login", &login), ("users", &users), ("approvals", &approvals), ("a 401", &refused)] {
        assert_eq!(header(r, "x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header(r, "cache-control"), "no-store", "{what}");
    }
    for path in ["/health", "/metrics", "/openapi.json", "/nope"] {
        let r = api.client.get(api.url(path)).send().await.expect("answer");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
    }
    // The docs: not framed, scripts only from here; and served with the types that nosniff
    // holds them to, so the page still loads.
    for (path, kind) in [
        ("/docs/", "text/html"),
        ("/docs/swagger-ui-bundle.js", "javascript"),
        ("/docs/swagger-initializer.js", "javascript"),
        ("/docs/swagger-ui.css", "text/css"),
    ] {
        let r = api.client.get(api.url(path)).send().await.expect("answer");
        assert_eq!(r.status(), 200, "{path}");
        assert!(header(&r, "content-type").contains(kind), "{path}: {}", header(&r, "content-type"));
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&r, "x-frame-options"), "DENY", "{path}");
        let csp = header(&r, "content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
    }
}
