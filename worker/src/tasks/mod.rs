//! The registry of named automations (Celery-style tasks) and the messages that start a run.
//!
//! A task is a function from a [`TaskContext`] (its run, params, the database, an HTTP client) to
//! a result, or to an error that says whether another attempt may help. A task that wants
//! something changed asks for it with follow-up events ([`TaskOutput::events`]): the runner
//! writes them to the outbox with the run's result, so they are applied once and audited.
//! Adding a task: write a module with `pub fn spec() -> TaskSpec`, and list it in
//! [`Registry::default`] (docs/tasks.md).

pub mod escalate_stale;
pub mod insights;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automation_shared::config::Config;
use automation_shared::db::events::{Destination, OutboxMessage};
use automation_shared::events::{EventType, derived_id};
use automation_shared::traces::TraceHeaders;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::MySqlPool;
use uuid::Uuid;

/// The type of the internal message that asks a worker to execute one attempt of a run.
pub const EXECUTE: &str = "automation.execute";

/// What a task gets.
#[derive(Clone)]
pub struct TaskContext {
    pub run_id: Uuid,
    pub attempt: u32,
    pub params: Value,
    pub pool: MySqlPool,
    pub http: reqwest::Client,
    pub config: Arc<Config>,
}

/// What a task returns.
#[derive(Debug, Default)]
pub struct TaskOutput {
    /// Stored on the run and returned by the API.
    pub result: Value,
    /// Events to publish with the result: (event id, type, data). Derive the ids from what they
    /// are about, so a repeated attempt asks for the same events.
    pub events: Vec<(String, EventType, Value)>,
}

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub struct TaskError {
    pub message: String,
    /// Another attempt may succeed (a timeout, a 5xx); otherwise the run fails at once.
    pub retryable: bool,
}

impl TaskError {
    pub fn retryable(message: impl Into<String>) -> TaskError {
        TaskError { message: message.into(), retryable: true }
    }

    pub fn fatal(message: impl Into<String>) -> TaskError {
        TaskError { message: message.into(), retryable: false }
    }
}

pub type TaskFn = fn(TaskContext) -> BoxFuture<'static, Result<TaskOutput, TaskError>>;

/// What the registry knows about a task.
#[derive(Clone)]
pub struct TaskSpec {
    pub name: &'static str,
    /// Attempts before the run fails for good.
    pub max_attempts: u32,
    /// An attempt running longer than this is stopped and counts as a retryable failure.
    pub time_limit: Duration,
    pub run: TaskFn,
}

impl std::fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSpec")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl TaskSpec {
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}

/// The named tasks this worker can run.
#[derive(Debug, Clone)]
pub struct Registry {
    tasks: BTreeMap<&'static str, TaskSpec>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::with([webhook::spec(), escalate_stale::spec(), insights::spec()])
    }
}

impl Registry {
    pub fn with(specs: impl IntoIterator<Item = TaskSpec>) -> Registry {
        Registry { tasks: specs.into_iter().map(|s| (s.name, s)).collect() }
    }

    pub fn get(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.tasks.keys().copied().collect()
    }
}

/// The body of an execute message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execute {
    pub run_id: Uuid,
    pub attempt: u32,
    /// The trace of the event that asked for the run, which the attempt continues. A start
    /// queued later by the scheduler has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// The outbox message that starts attempt `attempt` of a run. Its id is derived from both, so a
/// republished start is recognised. It carries the trace of the current span (the handler of
/// the event that asked for the run).
pub fn start_message(run_id: Uuid, attempt: u32) -> OutboxMessage {
    start_message_in(run_id, attempt, TraceHeaders::current())
}

/// A start message that continues `trace` (the one the run keeps).
pub fn start_message_in(run_id: Uuid, attempt: u32, trace: TraceHeaders) -> OutboxMessage {
    let message_id = derived_id(&format!("run-start:{attempt}"), &run_id.to_string());
    OutboxMessage {
        message_id,
        destination: Destination::Tasks,
        routing_key: EXECUTE.to_string(),
        body: serde_json::to_vec(&Execute {
            run_id,
            attempt,
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        })
        .unwrap_or_default(),
        reply_to: None,
    }
}

/// The delay before attempt `next` of a failed run: 5 s, 10 s, 20 s, … at most 10 minutes.
pub fn backoff(next: u32) -> chrono::Duration {
    let seconds = 5u64.saturating_mul(1u64 << (next.saturating_sub(2)).min(10));
    chrono::Duration::seconds(seconds.min(600) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_level_out() {
        assert_eq!(backoff(2).num_seconds(), 5);
        assert_eq!(backoff(3).num_seconds(), 10);
        assert_eq!(backoff(4).num_seconds(), 20);
        assert_eq!(backoff(20).num_seconds(), 600);
    }
}
