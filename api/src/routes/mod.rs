//! One module per resource: its router types, handlers and the queries only it uses.

pub mod approvals;
pub mod audit_logs;
pub mod automation;
pub mod dead_letters;
pub mod events;
pub mod health;
pub mod insights;
pub mod rules;
pub mod users;
pub mod workflows;

use uuid::Uuid;

use crate::problem::ApiError;

/// A path id: a malformed one names nothing that exists.
pub fn parse_id(id: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no {what} with id {id:?}")))
}
