//! Cursor pagination: bodies stay JSON arrays (as the old frontend expects) and the next page is
//! in a `Link: <...>; rel="next"` header. A cursor is opaque to clients.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::problem::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// The position after which the next page starts.
pub fn decode_cursor(cursor: Option<&str>) -> Result<Option<u64>, ApiError> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => c
            .strip_prefix('c')
            .and_then(|n| n.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::field("cursor", "not a cursor this API issued; take it from the Link header")),
    }
}

fn encode_cursor(position: u64) -> String {
    format!("c{position}")
}

/// A page of items and the link to the next one.
#[derive(Debug)]
pub struct Page<T> {
    items: Vec<T>,
    next: Option<String>,
}

impl<T: Serialize> Page<T> {
    /// `last` is the position of the last item; a full page means there may be more.
    pub fn new(items: Vec<T>, last: Option<u64>, limit: usize, path: &str, query: &str) -> Page<T> {
        let next = match last {
            Some(last) if items.len() == limit => {
                let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k != "cursor")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                params.push(("cursor".into(), encode_cursor(last)));
                let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
                Some(format!("{path}?{query}"))
            }
            _ => None,
        };
        Page { items, next }
    }
}

impl<T: Serialize> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        let mut response = Json(self.items).into_response();
        if let Some(next) = self.next
            && let Ok(value) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\""))
        {
            response.headers_mut().insert(header::LINK, value);
        }
        response
    }
}
