//! What became of an event, in the words both binaries use: the state `GET /api/v1/events/{id}`
//! reports ([`EventState`]) and why the worker refused one ([`RejectCode`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An enum of names: each variant's serde name, `as_str` and `parse` come from one literal, so
/// they cannot drift apart. The literal is a `tt`, not a `literal` fragment: utoipa does not see a
/// `rename` whose value arrives wrapped as a fragment, and would document the Rust names.
macro_rules! named {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$doc:meta])* $variant:ident => $text:tt,)+ }) => {
        $(#[$meta])*
        pub enum $name { $($(#[$doc])* #[serde(rename = $text)] $variant,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named! {
    /// Where an event stands, as its status shows it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum EventState {
        /// Published, not processed yet (or waiting in order for what it names).
        Pending => "pending",
        /// Applied.
        Processed => "processed",
        /// Refused by the worker: recorded, audited, announced, never retried.
        Rejected => "rejected",
        /// Failed transiently; waits for another attempt.
        Retrying => "retrying",
        /// In the dead-letter store.
        DeadLettered => "dead_lettered",
    }
}

named! {
    /// Why the worker refused an event: the machine-readable part of `event.rejected`, of the
    /// event status (`inbox.reason_code`) and of the API's problem, which maps it to an HTTP status.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, JsonSchema)]
    pub enum RejectCode {
        /// The workflow, approval, rule or run the event names does not exist (after a bounded
        /// wait for the event that would create it).
        NotFound => "not_found",
        /// The id given for a new entity is taken.
        AlreadyExists => "already_exists",
        /// The state machine does not allow the move.
        InvalidTransition => "invalid_transition",
        /// `expectedVersion` is stale.
        VersionConflict => "version_conflict",
        /// An approval was requested on a workflow that is not `ACTIVE`.
        WorkflowNotActive => "workflow_not_active",
        /// The actor may not do this (a requester deciding their own approval).
        Forbidden => "forbidden",
        /// The rule is not valid (its CEL condition does not compile); `reason` says why.
        InvalidRule => "invalid_rule",
        /// A chain of rule-caused events went deeper than the limit (8).
        ChainTooDeep => "chain_too_deep",
        /// No task is registered under that name.
        UnknownAutomation => "unknown_automation",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_event_state_reads_back_from_its_name_and_serializes_as_it() {
        for state in EventState::ALL {
            assert_eq!(EventState::parse(state.as_str()), Some(*state));
            assert_eq!(state.to_string(), state.as_str());
            assert_eq!(serde_json::to_value(state).unwrap(), Value::from(state.as_str()));
            assert_eq!(serde_json::from_value::<EventState>(Value::from(state.as_str())).unwrap(), *state);
        }
        assert_eq!(EventState::parse("accepted"), None);
    }

    #[test]
    fn the_event_states_are_the_ones_the_contract_names() {
        let names: Vec<&str> = EventState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, ["pending", "processed", "rejected", "retrying", "dead_lettered"]);
    }

    #[test]
    fn every_reject_code_reads_back_from_its_name_and_serializes_as_it() {
        for code in RejectCode::ALL {
            assert_eq!(RejectCode::parse(code.as_str()), Some(*code));
            assert_eq!(code.to_string(), code.as_str());
            assert_eq!(serde_json::to_value(code).unwrap(), Value::from(code.as_str()));
            assert_eq!(serde_json::from_value::<RejectCode>(Value::from(code.as_str())).unwrap(), *code);
        }
        assert_eq!(RejectCode::parse("refused"), None);
    }

    #[test]
    fn the_reject_codes_keep_the_names_already_stored_and_sent() {
        // Rows in `inbox.reason_code` and consumers of `event.rejected` hold these names.
        let names: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "not_found",
                "already_exists",
                "invalid_transition",
                "version_conflict",
                "workflow_not_active",
                "forbidden",
                "invalid_rule",
                "chain_too_deep",
                "unknown_automation"
            ]
        );
    }
}
