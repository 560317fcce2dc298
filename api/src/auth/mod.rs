//! Who is calling and what they may do: roles and permissions (CONTRACT §3), the bearer-token
//! extractor (signature, claims and revocation checked on every request, from memory), login and
//! logout.

pub mod jwt;
pub mod login;
pub mod password;
pub mod revocations;
pub mod sessions;

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::app::AppState;
use crate::problem::ApiError;

pub use automation_shared::access::{Permission, Role};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: String,
    pub role: Role,
    pub jti: String,
    pub expires_at: i64,
}

impl AuthUser {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if permission.allows(self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("the {} role may not do this", self.role)))
        }
    }

    /// `user` for people, `service` for machines: how the worker and the audit log name the actor.
    pub fn actor_type(&self) -> &'static str {
        if self.role == Role::Service { "service" } else { "user" }
    }
}

/// Runs `refresh` every `every` for as long as `target` is in use (a weak reference: the task
/// ends with the last `Arc`), saying once when reads start failing (and `meanwhile`, what that
/// means for requests) and once when they work again. The users' snapshot and the revocations are
/// kept fresh this way.
pub(crate) fn keep_fresh<T, F, Fut>(
    target: &Arc<T>,
    every: Duration,
    what: &'static str,
    meanwhile: &'static str,
    refresh: F,
) where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = sqlx::Result<()>> + Send,
{
    let target: Weak<T> = Arc::downgrade(target);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let Some(current) = target.upgrade() else { return };
            match refresh(current).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(what, "read again");
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(%error, what, meanwhile, "could not read");
                }
                Err(_) => {}
            }
            tokio::time::sleep(every).await;
        }
    });
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authenticate(state, &parts.headers).await
    }
}

/// Checks the bearer token: signature, claims, that its user is still who it says (active, same
/// role) and that it was not logged out.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<AuthUser, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("send a bearer token: Authorization: Bearer <token>".into()))?;
    let claims = state.jwt.verify(token).map_err(|reason| {
        tracing::debug!(%reason, "a token was refused");
        ApiError::Unauthorized("the token is invalid or expired; log in again".into())
    })?;
    // Checked before any query: such a claim would fail in MySQL (a 500 on every request, and a
    // token that could never be logged out).
    if let Some(problem) = claims.malformed() {
        return Err(ApiError::Unauthorized(problem.into()));
    }
    if let Some(reason) = state.sessions.refusal(&claims.sub, claims.role) {
        return Err(ApiError::Unauthorized(reason.into()));
    }
    // From memory; the table is read only when that copy is stale (`revocations`).
    match state.revocations.is_revoked(&claims.jti, &state.pool).await {
        Ok(false) => {}
        Ok(true) => return Err(ApiError::Unauthorized("the token was logged out; log in again".into())),
        Err(revocations::Unknown) => {
            return Err(ApiError::DatabaseUnavailable("the list of logged-out tokens could not be read".into()));
        }
    }
    Ok(AuthUser { id: claims.sub, role: claims.role, jti: claims.jti, expires_at: claims.exp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permission_table_follows_the_contract() {
        use Permission::*;
        use Role::*;
        let cases = [
            (Read, vec![Admin, Approver, Requester, Viewer, Service]),
            (RequestApproval, vec![Admin, Approver, Requester]),
            (DecideApproval, vec![Admin, Approver]),
            (ManageWorkflows, vec![Admin]),
            (ManageUsers, vec![Admin]),
            (WriteAudit, vec![Admin, Service]),
            (PublishEvents, vec![Admin, Service]),
            (RunAutomations, vec![Admin, Service]),
            (ManageRules, vec![Admin]),
            (ManageDeadLetters, vec![Admin]),
        ];
        for (permission, allowed) in cases {
            for role in [Admin, Approver, Requester, Viewer, Service] {
                assert_eq!(permission.allows(role), allowed.contains(&role), "{permission:?} for {role}");
            }
        }
    }
}
