//! Issue 9, "Trust boundaries", at the API: claims of any shape in a signed token, amounts the
//! database cannot hold, framework-made errors, JSON content types, and the security headers.

use automation_shared::testing::TestEnv;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestApi, json};

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
