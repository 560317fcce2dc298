//! The registry of named automations (Celery-style tasks) and the messages that start a run.

use std::collections::BTreeMap;
use std::time::Duration;

use automation_shared::db::events::{Destination, OutboxMessage};
use automation_shared::events::derived_id;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The type of the internal message that asks a worker to execute one attempt of a run.
pub const EXECUTE: &str = "automation.execute";

/// What the registry knows about a task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: &'static str,
    /// Attempts before the run fails for good.
    pub max_attempts: u32,
    /// An attempt running longer than this is stopped and counts as failed.
    pub time_limit: Duration,
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
        let specs = [
            TaskSpec { name: "webhook.call", max_attempts: 5, time_limit: Duration::from_secs(60) },
            TaskSpec { name: "approvals.escalate_stale", max_attempts: 3, time_limit: Duration::from_secs(120) },
            TaskSpec { name: "insights.recompute", max_attempts: 3, time_limit: Duration::from_secs(300) },
        ];
        Registry { tasks: specs.into_iter().map(|s| (s.name, s)).collect() }
    }
}

impl Registry {
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
}

/// The outbox message that starts attempt `attempt` of a run. Its id is derived from both, so a
/// republished start is recognised.
pub fn start_message(run_id: Uuid, attempt: u32) -> OutboxMessage {
    let message_id = derived_id(&format!("run-start:{attempt}"), &run_id.to_string());
    OutboxMessage {
        message_id,
        destination: Destination::Tasks,
        routing_key: EXECUTE.to_string(),
        body: serde_json::to_vec(&Execute { run_id, attempt }).unwrap_or_default(),
    }
}
