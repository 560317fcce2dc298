//! Every JWT attack the contract names is refused with 401; a proper token is accepted.

use automation_api::auth::Role;
use automation_shared::config::JwtAlgorithm;
use automation_shared::testing::TestEnv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::TestApi;

const PUBLIC_KEY: &str = include_str!("fixtures/test-rsa-public.pem");
const PRIVATE_KEY: &str = include_str!("fixtures/test-rsa-private.pem");
const OTHER_PRIVATE_KEY: &str = include_str!("fixtures/other-rsa-private.pem");

fn claims(user: &str) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": user, "role": "admin", "exp": now + 600, "iat": now, "nbf": now, "jti": uuid::Uuid::new_v4().to_string(),
           "iss": "automation-engine", "aud": "automation-engine"})
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

async fn status_with(api: &TestApi, token: &str) -> u16 {
    api.request(Method::GET, "/workflows", token).send().await.expect("answer").status().as_u16()
}

#[tokio::test]
async fn every_forged_or_stale_hs256_token_is_refused() {
    let mut env = TestEnv::new().await;
    env.config.jwt.secret = Some("a-test-secret-that-is-long-enough-for-hs256".into());
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Admin).await;
    assert_eq!(status_with(&api, &user.token).await, 200, "control: a token the API issued works");

    let secret = EncodingKey::from_secret(env.config.jwt.secret.as_deref().expect("secret").as_bytes());
    let sign = |c: &Value, header: Header| encode(&header, c, &secret).expect("sign");
    let base = claims(&user.id);
    let now = chrono::Utc::now().timestamp();
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().expect("object").remove(k);
        c
    };
    let mut odd_kid = Header::new(Algorithm::HS256);
    odd_kid.kid = Some("../../../../dev/null".into());
    let attacks: Vec<(&str, String)> = vec![
        ("alg none", unsigned(json!({"alg": "none", "typ": "JWT"}), &base)),
        ("alg none, upper case", unsigned(json!({"alg": "NONE", "typ": "JWT"}), &base)),
        ("expired", sign(&with("exp", json!(now - 120)), Header::new(Algorithm::HS256))),
        ("nbf in the future", sign(&with("nbf", json!(now + 600)), Header::new(Algorithm::HS256))),
        ("wrong audience", sign(&with("aud", json!("someone-else")), Header::new(Algorithm::HS256))),
        ("wrong issuer", sign(&with("iss", json!("evil")), Header::new(Algorithm::HS256))),
        ("missing exp", sign(&without("exp"), Header::new(Algorithm::HS256))),
        ("missing jti", sign(&without("jti"), Header::new(Algorithm::HS256))),
        ("odd kid", sign(&base, odd_kid)),
        (
            "another secret",
            encode(&Header::new(Algorithm::HS256), &base, &EncodingKey::from_secret(b"guessed")).expect("sign"),
        ),
        ("HS512 instead of HS256", sign(&base, Header::new(Algorithm::HS512))),
        (
            "RS256 with an unknown key",
            encode(
                &Header::new(Algorithm::RS256),
                &base,
                &EncodingKey::from_rsa_pem(OTHER_PRIVATE_KEY.as_bytes()).expect("key"),
            )
            .expect("sign"),
        ),
        ("garbage", "not.a.token".into()),
    ];
    for (name, token) in attacks {
        assert_eq!(status_with(&api, &token).await, 401, "{name} must be refused");
    }
}

#[tokio::test]
async fn an_rs256_api_refuses_hs256_tokens_signed_with_its_public_key() {
    let mut env = TestEnv::new().await;
    env.config.jwt.algorithm = JwtAlgorithm::RS256;
    env.config.jwt.public_key = Some(PUBLIC_KEY.into());
    env.config.jwt.private_key = Some(PRIVATE_KEY.into());
    let api = TestApi::start(&env.config).await;
    let user = api.user(Role::Admin).await;
    assert_eq!(status_with(&api, &user.token).await, 200, "control: an RS256 token the API issued works");
    let base = claims(&user.id);
    // Key confusion: the public key (which everyone has) used as an HMAC secret.
    let confused =
        encode(&Header::new(Algorithm::HS256), &base, &EncodingKey::from_secret(PUBLIC_KEY.as_bytes())).expect("sign");
    assert_eq!(status_with(&api, &confused).await, 401);
    let other = encode(
        &Header::new(Algorithm::RS256),
        &base,
        &EncodingKey::from_rsa_pem(OTHER_PRIVATE_KEY.as_bytes()).expect("key"),
    )
    .expect("sign");
    assert_eq!(status_with(&api, &other).await, 401, "signed by another key");
    assert_eq!(status_with(&api, &unsigned(json!({"alg": "none"}), &base)).await, 401);
}
