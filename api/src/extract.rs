//! Request bodies and query strings, read strictly: an unknown field, a wrong type or a broken
//! rule is answered with a problem that names the field, never with a guess.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use garde::Validate;
use serde::de::DeserializeOwned;

use crate::pagination::Paging;
use crate::problem::{ApiError, FieldError};

/// Is this `Content-Type` JSON? Only `application/json` and `application/<subtype>+json` are,
/// with or without parameters (`; charset=utf-8`), compared case-insensitively on the parsed type
/// and subtype. A substring match would take `text/plain; charset=json`, a type a browser sends
/// cross-site without a CORS preflight.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else { return false };
    let is_token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    if !kind.eq_ignore_ascii_case("application") || !is_token(subtype) {
        return false;
    }
    let subtype = subtype.to_ascii_lowercase();
    subtype == "json" || subtype.strip_suffix("+json").is_some_and(|prefix| !prefix.is_empty())
}

/// Refuses a request whose body is not declared as JSON (one `Content-Type`, see
/// [`is_json_media_type`]) with 415. Every route that reads a JSON body goes through here.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let json = match (types.next(), types.next()) {
        (Some(one), None) => one.to_str().is_ok_and(is_json_media_type),
        _ => false,
    };
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "send the body as application/json (or an application/...+json type)".into(),
        ))
    }
}

/// A JSON body, unparsed: the `Content-Type` checked by [`require_json`] and the size limit
/// answered as 413 problem+json. For routes that parse the body themselves (to name the item of a
/// batch at fault, or to refuse unknown fields of an open shape).
#[derive(Debug, Clone)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the body is larger than the API accepts".into())
            } else {
                ApiError::BadRequest(format!("the body could not be read: {rejection}"))
            }
        })?;
        Ok(JsonBytes(bytes))
    }
}

/// A JSON body (see [`JsonBytes`]), parsed into `T` (which denies unknown fields), then
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
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
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

/// A list's query string: its own filters (`T`, which refuses unknown names) and the
/// [`Paging`] every list shares, each validated; a problem in either is a 422 naming the field.
#[derive(Debug, Clone)]
pub struct ListQuery<T>(pub T, pub Paging);

impl<S, T> FromRequestParts<S> for ListQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate<Context = ()>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        list_query(parts.uri.query().unwrap_or_default())
    }
}

/// Splits `query` into the filters and the paging, and reads each.
pub fn list_query<T: DeserializeOwned + Validate<Context = ()>>(query: &str) -> Result<ListQuery<T>, ApiError> {
    let (paging, filters): (Vec<_>, Vec<_>) =
        form_urlencoded::parse(query.as_bytes()).partition(|(name, _)| Paging::NAMES.contains(&name.as_ref()));
    let encode = |pairs: Vec<_>| form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish();
    Ok(ListQuery(parse_query(&encode(filters))?, parse_query(&encode(paging))?))
}

#[cfg(test)]
mod tests {
    use super::{ApiError, ListQuery, is_json_media_type, list_query};

    #[derive(Debug, serde::Deserialize, garde::Validate)]
    #[serde(deny_unknown_fields)]
    struct Filters {
        #[garde(length(max = 3))]
        status: Option<String>,
    }

    fn field_of(error: ApiError) -> String {
        match error {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect::<Vec<_>>().join(","),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn a_list_query_reads_its_filters_and_the_shared_paging_apart() {
        let ListQuery(filters, paging) = list_query::<Filters>("status=NEW&limit=20&cursor=c9").expect("valid");
        assert_eq!(filters.status.as_deref(), Some("NEW"));
        assert_eq!((paging.limit(), paging.before().expect("a cursor")), (20, Some(9)));
        let ListQuery(_, paging) = list_query::<Filters>("").expect("valid");
        assert_eq!((paging.limit(), paging.before().expect("none")), (50, None));
    }

    #[test]
    fn a_list_query_names_the_parameter_it_cannot_use() {
        assert_eq!(field_of(list_query::<Filters>("limit=0").expect_err("too small")), "limit");
        assert_eq!(field_of(list_query::<Filters>("limit=501").expect_err("too big")), "limit");
        assert_eq!(field_of(list_query::<Filters>("status=TOOLONG").expect_err("too long")), "status");
        let unknown = list_query::<Filters>("colour=red").expect_err("unknown filter");
        assert!(matches!(unknown, ApiError::Validation(_)), "{unknown:?}");
    }

    #[test]
    fn only_application_json_and_plus_json_types_are_json() {
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/cloudevents+json",
            "application/cloudevents+json; charset=utf-8",
            "application/problem+JSON",
        ] {
            assert!(is_json_media_type(json), "{json} is JSON");
        }
        for other in [
            "text/plain; charset=json",
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded; json",
            "multipart/form-data; boundary=json",
            "application/jsonx",
            "application/json5",
            "application/+json",
            "text/foo+json",
            "application /json",
            "application/ json",
            "json",
            "",
        ] {
            assert!(!is_json_media_type(other), "{other:?} is not JSON");
        }
    }
}
