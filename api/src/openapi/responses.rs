//! The responses many operations share, documented once under `components/responses` and
//! referenced from each operation through the groups below: the problems, by status, and the
//! 202 of every write.

use utoipa::{IntoResponses, ToResponse};

use crate::commands::Accepted;
use crate::problem::Problem;

/// 400: the request could not be read.
#[derive(ToResponse)]
#[response(
    description = "The request could not be read: a body that is not JSON, a header or path that is not valid",
    content_type = "application/problem+json"
)]
pub struct BadRequest(pub Problem);

/// 401: no valid bearer token.
#[derive(ToResponse)]
#[response(
    description = "No valid bearer token: missing, expired, logged out, or not signed by this API",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub struct Unauthorized(pub Problem);

/// 403: the caller's role may not do this.
#[derive(ToResponse)]
#[response(description = "The caller's role may not do this", content_type = "application/problem+json")]
pub struct Forbidden(pub Problem);

/// 404: nothing with that id (a malformed id names nothing either).
#[derive(ToResponse)]
#[response(
    description = "Nothing with that id (a malformed id names nothing either)",
    content_type = "application/problem+json"
)]
pub struct NotFound(pub Problem);

/// 408: past the request timeout.
#[derive(ToResponse)]
#[response(
    description = "The request was not completed within the request timeout; nothing is known to have been accepted",
    content_type = "application/problem+json"
)]
pub struct RequestTimeout(pub Problem);

/// 409: the worker refused the event (only with `Prefer: wait`).
#[derive(ToResponse)]
#[response(
    description = "With `Prefer: wait`: the worker refused the event (an illegal move, a stale `expectedVersion`, \
                   a duplicate); `code` says which and `eventId` names the event",
    content_type = "application/problem+json"
)]
pub struct Refused(pub Problem);

/// 413: over the body limit.
#[derive(ToResponse)]
#[response(description = "The body is larger than the API accepts", content_type = "application/problem+json")]
pub struct PayloadTooLarge(pub Problem);

/// 415: not JSON.
#[derive(ToResponse)]
#[response(
    description = "The body is not `application/json` (or an `application/...+json` type)",
    content_type = "application/problem+json"
)]
pub struct UnsupportedMediaType(pub Problem);

/// 422: a field is missing or malformed.
#[derive(ToResponse)]
#[response(
    description = "A field, a query parameter or a header is missing or malformed; `errors` names each",
    content_type = "application/problem+json"
)]
pub struct ValidationFailed(pub Problem);

/// 429: rate limited.
#[derive(ToResponse)]
#[response(
    description = "Too many attempts; retry after the time in `Retry-After`",
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before the next attempt"))
)]
pub struct TooManyRequests(pub Problem);

/// 500: an internal error (logged; no internal text is sent).
#[derive(ToResponse)]
#[response(
    description = "An internal error; it was logged, and no internal detail is sent",
    content_type = "application/problem+json"
)]
pub struct InternalError(pub Problem);

/// 503: a dependency did not answer, so nothing was accepted.
#[derive(ToResponse)]
#[response(
    description = "The broker did not confirm the event (or the database did not answer): nothing was accepted; \
                   retry after `Retry-After`",
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))
)]
pub struct Unavailable(pub Problem);

/// 202: the broker confirmed the event.
#[derive(ToResponse)]
#[response(
    description = "Accepted: the broker confirmed the event. Follow it at `statusUrl`, also sent as `Location`",
    headers(("Location" = String, description = "The event's status URL, `/api/v1/events/{eventId}`"))
)]
pub struct EventAccepted(pub Accepted);

/// Every operation behind a bearer token.
#[derive(IntoResponses)]
pub enum Secured {
    #[response(status = 401)]
    Unauthorized(#[ref_response] Unauthorized),
    #[response(status = 403)]
    Forbidden(#[ref_response] Forbidden),
}

/// An operation on one resource by id.
#[derive(IntoResponses)]
pub enum Lookup {
    #[response(status = 404)]
    NotFound(#[ref_response] NotFound),
}

/// A list: its filters and paging parameters are checked.
#[derive(IntoResponses)]
pub enum Listing {
    #[response(status = 422)]
    ValidationFailed(#[ref_response] ValidationFailed),
}

/// An operation that reads a JSON body.
#[derive(IntoResponses)]
pub enum JsonBody {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 413)]
    PayloadTooLarge(#[ref_response] PayloadTooLarge),
    #[response(status = 415)]
    UnsupportedMediaType(#[ref_response] UnsupportedMediaType),
    #[response(status = 422)]
    ValidationFailed(#[ref_response] ValidationFailed),
}

/// An operation that publishes an event: the broker must confirm it, and with `Prefer: wait`
/// the worker may refuse it.
#[derive(IntoResponses)]
pub enum Publishing {
    #[response(status = 202)]
    Accepted(#[ref_response] EventAccepted),
    #[response(status = 409)]
    Refused(#[ref_response] Refused),
    #[response(status = 503)]
    Unavailable(#[ref_response] Unavailable),
}
