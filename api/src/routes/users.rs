//! Users: `GET /users` and `POST /users` for admins, the old `GET /users?email=&password=`
//! login (410 Gone, never logged), and the queries `automation-api user create` shares.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use garde::Validate;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, MySqlExecutor, MySqlPool};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::{AuthUser, Permission, Role, password};
use crate::extract::{ListQuery, ValidJson};
use crate::openapi::responses::{JsonBody, Listing, Secured};
use crate::pagination::{Keyset, Paging};
use crate::problem::{ApiError, ApiResult, Problem};

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub seq: u64,
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// A user as clients see it (never with the password hash).
#[derive(Debug, Clone, Serialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    #[serde(skip)]
    pub seq: u64,
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

/// The columns of a [`UserView`]: never the password hash.
const VIEW_SELECT: &str = "select seq, id, email, name, role, active, created_at from users";

impl UserRow {
    pub fn view(&self) -> UserView {
        UserView {
            seq: self.seq,
            id: self.id.clone(),
            email: self.email.clone(),
            name: self.name.clone(),
            role: self.role.clone(),
            active: self.active,
            created_at: self.created_at,
        }
    }
}

pub async fn find_by_email<'e>(executor: impl MySqlExecutor<'e>, email: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as("select seq, id, email, name, role, password_hash, active, created_at from users where email = ?")
        .bind(email)
        .fetch_optional(executor)
        .await
}

#[derive(Debug, Clone, Deserialize, Validate, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[garde(email, length(max = 254))]
    #[schema(format = "email", max_length = 254)]
    pub email: String,
    #[garde(length(chars, min = 1, max = 200))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[garde(skip)]
    pub role: Role,
    /// At least 12 characters.
    #[garde(length(chars, min = password::MIN_PASSWORD_CHARS, max = 1024))]
    #[schema(min_length = 12, max_length = 1024)]
    pub password: String,
}

/// Creates a user; a taken email is a 409.
pub async fn create(pool: &MySqlPool, user: NewUser) -> ApiResult<UserRow> {
    let email = user.email.trim().to_lowercase();
    if find_by_email(pool, &email).await?.is_some() {
        return Err(ApiError::Conflict(format!("a user with email {email} already exists")));
    }
    let hash = password::hash(user.password).await?;
    let id = Uuid::new_v4().to_string();
    let result = sqlx::query("insert into users (id, email, name, role, password_hash) values (?, ?, ?, ?, ?)")
        .bind(&id)
        .bind(&email)
        .bind(user.name.trim())
        .bind(user.role.as_str())
        .bind(&hash)
        .execute(pool)
        .await;
    if let Err(error) = &result
        && automation_shared::db::classify(error) == automation_shared::db::Failure::Duplicate
    {
        return Err(ApiError::Conflict(format!("a user with email {email} already exists")));
    }
    result?;
    find_by_email(pool, &email).await?.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the new user vanished")))
}

/// The user list has no filters: only the paging.
#[derive(Debug, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ListUsers {}

/// List users
///
/// Newest first; paged by `limit` and `cursor`. (The old login, `?email=&password=`, answers
/// 410 Gone.)
#[utoipa::path(
    get, path = "/users", tag = "users", operation_id = "listUsers",
    security(("bearer" = [])),
    params(Paging),
    responses(
        (status = 200, description = "A page of users, newest first; the next page is in the `Link` header", body = Vec<UserView>),
        Secured, Listing,
        (status = 410, description = "The old login (`?email=&password=`): use POST /auth/login", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(State(state): State<AppState>, RawQuery(query): RawQuery, headers: HeaderMap) -> ApiResult<Response> {
    // The old frontend logged in with GET /users?email=&password=. Answer it before anything
    // else, and never echo or log the query: it holds a password.
    let query = query.unwrap_or_default();
    if form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "password" || k == "email") {
        return Err(ApiError::Gone(
            "logging in with GET /users is gone; use POST /auth/login with {email, password}".into(),
        ));
    }
    let user = crate::auth::authenticate(&state, &headers).await?;
    user.require(Permission::ManageUsers)?;
    let ListQuery(ListUsers {}, paging) = crate::extract::list_query(&query)?;
    let list = Keyset::new(VIEW_SELECT, &paging)?;
    Ok(list.fetch(&state.pool, |u: &UserView| u.seq, "/users", Some(&query)).await?.into_response())
}

/// Create a user
///
/// An account with a role; the password is hashed with Argon2 and never returned.
#[utoipa::path(
    post, path = "/users", tag = "users", operation_id = "createUser",
    security(("bearer" = [])),
    request_body(content = NewUser, example = json!({
        "email": "ada@example.com", "name": "Ada Lovelace", "role": "approver", "password": "correct horse battery staple"
    })),
    responses(
        (status = 201, description = "Created: the user", body = UserView),
        Secured, JsonBody,
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_user(
    State(state): State<AppState>,
    user: AuthUser,
    ValidJson(new): ValidJson<NewUser>,
) -> ApiResult<Response> {
    user.require(Permission::ManageUsers)?;
    let created = create(&state.pool, new).await?;
    tracing::info!(user.id = %created.id, by = %user.id, "user created");
    Ok((StatusCode::CREATED, Json(created.view())).into_response())
}
