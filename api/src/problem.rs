//! Every error the API answers with, as RFC 9457 `application/problem+json`. Internal errors are
//! logged once here and answered with a generic 500 that carries no internal text. Errors that
//! the framework makes (a body over the limit, a timeout, an unparsable path) are rewritten into
//! problems by [`framework_errors`].

use automation_shared::events::RejectCode;
use axum::body::Body;
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
    /// The machine-readable reason of a refusal by the worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<RejectCode>,
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
    /// The worker refused the event (for `Prefer: wait`). `code` is `None` when the refusal could
    /// not be read (a code this build does not know).
    #[error("{reason}")]
    Refused { status: StatusCode, code: Option<RejectCode>, reason: String, event_id: String },
    /// The database is needed to answer and could not be read lately (logged where that failed).
    #[error("{0}")]
    DatabaseUnavailable(String),
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
            ApiError::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database-unavailable", "The database is unavailable")
            }
            ApiError::Database(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error")
            }
        }
    }

    /// A refusal by the worker, with its code as an HTTP status; one it could not name is a 409.
    pub fn refused(code: Option<RejectCode>, reason: String, event_id: String) -> ApiError {
        let status = match code {
            Some(RejectCode::NotFound) => StatusCode::NOT_FOUND,
            Some(RejectCode::Forbidden) => StatusCode::FORBIDDEN,
            Some(RejectCode::InvalidRule | RejectCode::UnknownAutomation | RejectCode::ChainTooDeep) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Some(
                RejectCode::AlreadyExists
                | RejectCode::InvalidTransition
                | RejectCode::VersionConflict
                | RejectCode::WorkflowNotActive,
            )
            | None => StatusCode::CONFLICT,
        };
        ApiError::Refused { status, code, reason, event_id }
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
            ApiError::DatabaseUnavailable(_) => {
                problem.detail = "the database did not answer; retry later".into();
                retry_after = Some(5);
            }
            ApiError::Refused { code, event_id, .. } => {
                problem.code = code;
                problem.event_id = Some(event_id);
            }
            ApiError::Database(ref error) => {
                use automation_shared::db::Failure;
                // Transient (the database away, a node not ready, a read-only former primary, a
                // deadlock or a replicated database's certification failure): 503 with
                // Retry-After, the request may simply be sent again. Anything else is a bug.
                let transient =
                    matches!(automation_shared::db::classify(error), Failure::Unavailable | Failure::Conflict);
                if transient {
                    if automation_shared::db::classify(error) == Failure::Unavailable {
                        // Its connection may lead to a read-only former primary: open new ones.
                        automation_shared::db::distrust_connections();
                    }
                    tracing::warn!(error = %error, "the database could not answer a request; answering 503");
                } else {
                    tracing::error!(error = %error, "database error while answering a request");
                }
                problem.detail = "an internal error occurred; it was logged".into();
                if transient {
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

/// Marks an error response whose body is deliberately not a problem: readiness answers 503 with
/// the `dependencies` that failed, as probes and the contract expect.
#[derive(Debug, Clone, Copy)]
pub struct NotAProblem;

/// The longest framework error text kept as a problem's `detail`.
const MAX_FRAMEWORK_DETAIL: usize = 500;

/// Middleware: every 4xx and 5xx leaves as `application/problem+json`. Our own errors already
/// are; what axum and tower-http make themselves (413 from the body limit, 408 from the timeout,
/// 400 from a path that is not UTF-8, ...) is plain text or empty, and is rewritten here with the
/// same `type`, `title`, `status` and `detail` as ours, keeping its headers (`Allow`,
/// `Retry-After`, CORS). A client error keeps the framework's text as `detail`; a server error's
/// text is never sent.
pub async fn framework_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/problem+json")
    });
    if !(status.is_client_error() || status.is_server_error())
        || is_problem
        || response.extensions().get::<NotAProblem>().is_some()
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = if status.is_client_error() {
        axum::body::to_bytes(body, 16 * 1024)
            .await
            .ok()
            .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
            .map(|text| text.trim().chars().take(MAX_FRAMEWORK_DETAIL).collect::<String>())
            .filter(|text| !text.is_empty())
    } else {
        None
    };
    let (slug, detail) = match status {
        StatusCode::BAD_REQUEST => ("bad-request", "the request could not be read"),
        StatusCode::NOT_FOUND => ("not-found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "this method is not allowed here"),
        StatusCode::REQUEST_TIMEOUT => {
            ("request-timeout", "the request was not completed in time; nothing is known to have been accepted")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "the body is larger than the API accepts"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "send the body as application/json"),
        StatusCode::UNPROCESSABLE_ENTITY => ("validation", "the request could not be used as sent"),
        s if s.is_server_error() => ("internal", "an internal error occurred"),
        _ => ("client-error", "the request was refused"),
    };
    let title =
        status.canonical_reason().unwrap_or(if status.is_server_error() { "Server error" } else { "Client error" });
    let problem = Problem {
        kind: format!("{PROBLEM_BASE}/{slug}"),
        title: title.to_string(),
        status: status.as_u16(),
        // The framework's own words are more precise (`Failed to parse the request body as JSON: ...`),
        // except for the body limit, whose text names an internal type.
        detail: match text {
            Some(text) if status != StatusCode::PAYLOAD_TOO_LARGE => text,
            _ => detail.to_string(),
        },
        errors: Vec::new(),
        code: None,
        event_id: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    Response::from_parts(parts, Body::from(body))
}
