//! `POST /auth/login` and `POST /auth/logout`.
//!
//! An unknown email costs the same Argon2 work and gets the same answer as a wrong password.
//! Failed logins are counted per account and per client address in MySQL, so every API replica
//! shares the limits; past either limit the answer is 429 until the window ends.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use garde::Validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AuthUser, Role, password};
use crate::app::AppState;
use crate::extract::ValidJson;
use crate::openapi::responses::{JsonBody, TooManyRequests, Unauthorized};
use crate::problem::{ApiError, ApiResult, Problem};
use crate::routes::users::{self, UserView};

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[garde(length(min = 1, max = 254))]
    #[schema(min_length = 1, max_length = 254)]
    pub email: String,
    #[garde(length(min = 1, max = 1024))]
    #[schema(min_length = 1, max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub user: UserView,
}

/// The client address: the socket's peer, or the first `X-Forwarded-For` hop behind a trusted
/// proxy.
pub fn client_address(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    if state.config.api.trust_forwarded_for
        && let Some(first) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return first.to_string();
    }
    peer.map_or_else(|| "unknown".to_string(), |p| p.ip().to_string())
}

/// Log in
///
/// Exchanges an email and password for a bearer token (JWT).
#[utoipa::path(
    post, path = "/auth/login", tag = "auth", operation_id = "login",
    security(()),
    request_body(content = LoginRequest, example = json!({"email": "ada@example.com", "password": "correct horse battery staple"})),
    responses(
        (status = 200, description = "Logged in: the token and who it is for", body = LoginResponse),
        JsonBody,
        (status = 401, description = "Unknown email or wrong password (the same answer, in the same time, for both)",
            body = Problem, content_type = "application/problem+json"),
        (status = 429, response = TooManyRequests),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ValidJson(request): ValidJson<LoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let email = request.email.trim().to_lowercase();
    let address = client_address(&state, &headers, peer.map(|Extension(ConnectInfo(p))| p));
    let scopes = [format!("account:{email}"), format!("address:{address}")];
    let limits = [state.config.api.login_max_failures_per_account, state.config.api.login_max_failures_per_address];
    let window = state.config.api.login_window_secs;
    for (scope, limit) in scopes.iter().zip(limits) {
        let blocked: Option<i64> = sqlx::query_scalar(
            "select timestampdiff(second, now(6), window_started_at + interval ? second) from login_failures \
             where scope = ? and failures >= ? and window_started_at + interval ? second > now(6)",
        )
        .bind(window)
        .bind(scope)
        .bind(limit)
        .bind(window)
        .fetch_optional(&state.pool)
        .await?;
        if let Some(remaining) = blocked {
            return Err(ApiError::TooManyRequests { retry_after_secs: remaining.max(1) as u64 });
        }
    }

    let user = users::find_by_email(&state.pool, &email).await?;
    // The same Argon2 work whether or not the account exists.
    let stored = user.as_ref().map_or_else(|| state.dummy_hash.clone(), |u| u.password_hash.clone());
    let matches = password::verify(request.password, stored).await;
    let user = match user {
        Some(user) if matches && user.active => user,
        _ => {
            for scope in &scopes {
                sqlx::query(
                    "insert into login_failures (scope, failures, window_started_at) values (?, 1, now(6)) \
                     on duplicate key update \
                     failures = if(window_started_at + interval ? second <= now(6), 1, failures + 1), \
                     window_started_at = if(window_started_at + interval ? second <= now(6), now(6), window_started_at)",
                )
                .bind(scope)
                .bind(window)
                .bind(window)
                .execute(&state.pool)
                .await?;
            }
            return Err(ApiError::Unauthorized("the email or the password is wrong".into()));
        }
    };
    sqlx::query("delete from login_failures where scope = ?").bind(&scopes[0]).execute(&state.pool).await?;
    let role: Role = user.role.parse().map_err(|e: String| ApiError::Internal(anyhow::anyhow!(e)))?;
    let Some(issued) = state.jwt.issue(&user.id, role) else {
        return Err(ApiError::NotImplemented(
            "this API verifies RS256 tokens but has no JWT_PRIVATE_KEY to issue them".into(),
        ));
    };
    let (token, _) = issued.map_err(|e| ApiError::Internal(e.into()))?;
    tracing::info!(user.id = %user.id, "login");
    Ok(Json(LoginResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.jwt.ttl_secs(),
        user: user.view(),
    }))
}

/// Log out
///
/// Revokes the token at once: it is refused from then on.
#[utoipa::path(
    post, path = "/auth/logout", tag = "auth", operation_id = "logout",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The token is refused from now on"),
        (status = 401, response = Unauthorized),
    )
)]
pub async fn logout(State(state): State<AppState>, user: AuthUser) -> ApiResult<StatusCode> {
    // A revocation must outlive its token; past what `datetime` holds, "never" is 9999-12-31.
    // Bound as a naive UTC `datetime`: sqlx sends a `DateTime<Utc>` as a `timestamp`, which
    // MariaDB turns into NULL past 2038-01-19.
    let expires_at = chrono::DateTime::from_timestamp(user.expires_at.min(super::jwt::MAX_DATETIME_SECS), 0)
        .unwrap_or_else(chrono::Utc::now)
        .naive_utc();
    sqlx::query(
        "insert into revoked_tokens (jti, user_id, expires_at) values (?, ?, ?) on duplicate key update jti = jti",
    )
    .bind(&user.jti)
    .bind(&user.id)
    .bind(expires_at)
    .execute(&state.pool)
    .await?;
    state.revocations.revoke(&user.jti, user.expires_at);
    // Revocations of tokens that expired anyway are of no use; trim a few each time.
    sqlx::query("delete from revoked_tokens where expires_at < now(6) - interval 1 hour limit 100")
        .execute(&state.pool)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
