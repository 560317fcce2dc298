//! Cursor pagination: bodies stay JSON arrays (as the old frontend expects) and the next page is
//! in a `Link: <...>; rel="next"` header. A cursor is opaque to clients.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use garde::Validate;
use serde::{Deserialize, Serialize};
use sqlx::mysql::MySqlRow;
use sqlx::{Encode, FromRow, MySql, MySqlPool, QueryBuilder, Type};
use utoipa::IntoParams;

use crate::problem::ApiError;

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most items a page holds.
pub const MAX_LIMIT: u32 = 500;

/// The paging parameters every list takes (read apart from its filters by
/// [`ListQuery`](crate::extract::ListQuery), documented once as `components/parameters`).
#[derive(Debug, Clone, Default, Deserialize, Validate, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Items per page: 1 to 500 (default 50).
    #[garde(range(min = 1, max = MAX_LIMIT))]
    #[param(minimum = 1, maximum = 500, default = 50, example = 50)]
    pub limit: Option<u32>,
    /// Where the page starts: take it from the `Link: <...>; rel="next"` header of the previous
    /// page. Opaque.
    #[garde(skip)]
    pub cursor: Option<String>,
}

impl Paging {
    /// The query parameters that are paging, not filters.
    pub const NAMES: [&str; 2] = ["limit", "cursor"];

    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// The position after which the page starts.
    pub fn before(&self) -> Result<Option<u64>, ApiError> {
        decode_cursor(self.cursor.as_deref())
    }
}

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

/// A list read newest first and paged by `seq`: `<select> where seq < <cursor> [and ...]
/// order by seq desc limit <limit>`. Every list of the API pages the same way through this.
pub struct Keyset {
    sql: QueryBuilder<MySql>,
    limit: u32,
}

impl Keyset {
    /// `select` ends before the `where`; a bad cursor is a 422 naming `cursor`.
    pub fn new(select: &str, paging: &Paging) -> Result<Keyset, ApiError> {
        let before = paging.before()?.unwrap_or(u64::MAX);
        let mut sql = QueryBuilder::new(select);
        sql.push(" where seq < ").push_bind(before);
        Ok(Keyset { sql, limit: paging.limit() })
    }

    /// Narrows the list when a filter is given: `and <condition><value>`, e.g. `"status = "`.
    pub fn and<'t, T: Encode<'t, MySql> + Type<MySql>>(&mut self, condition: &str, value: Option<T>) -> &mut Keyset {
        if let Some(value) = value {
            self.sql.push(" and ").push(condition).push_bind(value);
        }
        self
    }

    /// Runs the query; `path` and the request's raw query make the next page's link.
    pub async fn fetch<T>(
        mut self,
        pool: &MySqlPool,
        position: impl Fn(&T) -> u64,
        path: &str,
        raw_query: Option<&str>,
    ) -> Result<Page<T>, ApiError>
    where
        T: Serialize + Send + Unpin + for<'r> FromRow<'r, MySqlRow>,
    {
        self.sql.push(" order by seq desc limit ").push_bind(self.limit);
        let rows: Vec<T> = self.sql.build_query_as().fetch_all(pool).await?;
        let last = rows.last().map(position);
        Ok(Page::new(rows, last, self.limit as usize, path, raw_query.unwrap_or_default()))
    }
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
