//! Request bodies and query strings, read strictly: an unknown field, a wrong type or a broken
//! rule is answered with a problem that names the field, never with a guess.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use garde::Validate;
use serde::de::DeserializeOwned;

use crate::problem::{ApiError, FieldError};

/// A JSON body: `application/json`, parsed into `T` (which denies unknown fields), then
/// validated.
#[derive(Debug, Clone)]
pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate<Context = ()>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        });
        if !json {
            return Err(ApiError::UnsupportedMediaType("send the body as application/json".into()));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the body is larger than the API accepts".into())
            } else {
                ApiError::BadRequest(format!("the body could not be read: {rejection}"))
            }
        })?;
        let value: T = parse_json(&bytes)?;
        validate(&value)?;
        Ok(ValidJson(value))
    }
}

/// Parses JSON into `T`; a syntax error is a 400, a value that does not fit is a 422 naming it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { String::new() } else { path };
                ApiError::Validation(vec![FieldError { field, message: strip_position(&inner.to_string()) }])
            }
            _ => ApiError::BadRequest(format!("the body is not valid JSON: {inner}")),
        }
    })?;
    deserializer.end().map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// Runs `garde` and reports every broken rule with the camelCase path clients sent.
pub fn validate<T: Validate<Context = ()>>(value: &T) -> Result<(), ApiError> {
    value.validate().map_err(|report| {
        ApiError::Validation(
            report
                .iter()
                .map(|(path, error)| FieldError {
                    field: automation_shared::events::camel_case_path(&path.to_string()),
                    message: error.to_string(),
                })
                .collect(),
        )
    })
}

/// serde's messages end with "at line 1 column 42": noise for a field-level message.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// A query string parsed into `T` (which denies unknown parameters), then validated.
#[derive(Debug, Clone)]
pub struct ValidQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate<Context = ()>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default()).map(ValidQuery)
    }
}

/// Parses and validates a query string; the problem names the parameter.
pub fn parse_query<T: DeserializeOwned + Validate<Context = ()>>(query: &str) -> Result<T, ApiError> {
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    let value: T = serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { path };
        ApiError::Validation(vec![FieldError { field, message: error.into_inner().to_string() }])
    })?;
    validate(&value)?;
    Ok(value)
}
