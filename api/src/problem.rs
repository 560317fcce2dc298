//! Every error the API answers with, as RFC 9457 `application/problem+json`. Internal errors are
//! logged once here and answered with a generic 500 that carries no internal text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `https://automation-engine.dev/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Per-field messages, for validation problems.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The machine-readable reason of a refusal by the worker (`invalid_transition`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The event a refusal is about.
    #[serde(skip_serializing_if = "Option::is_none", rename = "eventId")]
    pub event_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Where the problem is, as a path into the request body (`amount`, `then[0].status`) or the
    /// name of a query parameter.
    pub field: String,
    pub message: String,
}

const PROBLEM_BASE: &str = "https://automation-engine.dev/problems";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many attempts")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("the broker is unavailable: {reason}")]
    BrokerUnavailable { reason: String },
    /// The worker refused the event (for `Prefer: wait`).
    #[error("{reason}")]
    Refused { status: StatusCode, code: String, reason: String, event_id: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError { field: field.into(), message: message.into() }])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation", "Validation failed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::Gone(_) => (StatusCode::GONE, "gone", "Gone"),
            ApiError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not-implemented", "Not implemented"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Payload too large"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type")
            }
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too-many-requests", "Too many requests")
            }
            ApiError::BrokerUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "broker-unavailable", "The message broker is unavailable")
            }
            ApiError::Refused { status, .. } => (*status, "refused", "The worker refused the event"),
            ApiError::Database(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        }
    }

    /// A refusal code from the worker as an HTTP status.
    pub fn refused(code: &str, reason: String, event_id: String) -> ApiError {
        let status = match code {
            "not_found" => StatusCode::NOT_FOUND,
            "forbidden" => StatusCode::FORBIDDEN,
            "invalid_rule" | "unknown_automation" | "chain_too_deep" => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::CONFLICT,
        };
        ApiError::Refused { status, code: code.to_string(), reason, event_id }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let mut problem = Problem {
            kind: format!("{PROBLEM_BASE}/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors: Vec::new(),
            code: None,
            event_id: None,
        };
        let mut retry_after = None;
        match self {
            ApiError::Validation(errors) => {
                problem.detail = match errors.as_slice() {
                    [one] => format!("{}: {}", one.field, one.message),
                    _ => format!("{} fields are invalid", errors.len()),
                };
                problem.errors = errors;
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                problem.detail = format!("too many failed attempts; try again in {retry_after_secs} seconds");
                retry_after = Some(retry_after_secs);
            }
            ApiError::BrokerUnavailable { ref reason } => {
                tracing::warn!(reason = %reason, "answering 503: the broker did not take the message");
                problem.detail =
                    "the message broker did not confirm the message; nothing was accepted, retry later".into();
                retry_after = Some(5);
            }
            ApiError::Refused { code, event_id, .. } => {
                problem.code = Some(code);
                problem.event_id = Some(event_id);
            }
            ApiError::Database(ref error) => {
                tracing::error!(error = %error, "database error while answering a request");
                problem.detail = "an internal error occurred; it was logged".into();
                if automation_shared::db::classify(error) == automation_shared::db::Failure::Unavailable {
                    problem.status = StatusCode::SERVICE_UNAVAILABLE.as_u16();
                    problem.kind = format!("{PROBLEM_BASE}/database-unavailable");
                    problem.title = "The database is unavailable".into();
                    problem.detail = "the database did not answer; retry later".into();
                    retry_after = Some(5);
                }
            }
            ApiError::Internal(ref error) => {
                tracing::error!(error = format!("{error:#}"), "internal error while answering a request");
                problem.detail = "an internal error occurred; it was logged".into();
            }
            _ => {}
        }
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
