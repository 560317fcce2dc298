//! Where a message goes when it cannot be applied now: a retry queue (it comes back after a
//! delay, holding no consumer and blocking nothing behind it) or the dead-letter exchange (with
//! its reason and history). Every publish here waits for the broker's confirm before the
//! consumer acks the original.

use automation_shared::events::{WorkQueue, derived_id};
use automation_shared::messaging::{self, Origin, Outgoing, PublishError, SystemUsers, header, int_header};
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::broker::Broker;

/// Headers this system sets on retried and dead messages.
pub mod headers {
    /// The attempt this delivery is (1 when absent).
    pub const ATTEMPT: &str = "x-attempt";
    /// The routing key the message was first published with (a retry comes back with the work
    /// queue's name as its routing key).
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    pub const FIRST_FAILED_AT: &str = "x-first-failed-at";
    /// JSON array of the failures so far, oldest first (the last ten).
    pub const HISTORY: &str = "x-history";
    pub const DEAD_LETTER_ID: &str = "x-dead-letter-id";
    pub const DEAD_REASON: &str = "x-dead-reason";
    pub const ERROR_KIND: &str = "x-error-kind";
    pub const ORIGIN_QUEUE: &str = "x-origin-queue";
    pub const EVENT_ID: &str = "x-event-id";
    pub const EVENT_TYPE: &str = "x-event-type";
    pub const DEAD_AT: &str = "x-dead-at";
}

/// Longest error text kept per failure.
const MAX_ERROR_CHARS: usize = 500;
/// Failures kept in the history header.
const MAX_HISTORY: usize = 10;

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub error: String,
}

/// A message that could not be applied, as the consumer hands it over.
#[derive(Debug, Clone)]
pub struct Unapplied<'a> {
    pub queue: WorkQueue,
    pub routing_key: &'a str,
    pub properties: &'a BasicProperties,
    pub body: &'a [u8],
    pub event_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
}

impl Unapplied<'_> {
    /// The attempt this delivery was: 1 unless it came back from a retry queue.
    pub fn attempt(&self) -> u32 {
        attempt_of(self.properties)
    }

    fn history(&self) -> Vec<Failure> {
        header(self.properties, headers::HISTORY).and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default()
    }

    fn first_failed_at(&self) -> DateTime<Utc> {
        header(self.properties, headers::FIRST_FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc))
    }

    /// A stable identity for this message: its event id, or its routing key and body.
    fn identity(&self) -> String {
        self.event_id.map(str::to_string).unwrap_or_else(|| {
            Uuid::new_v5(
                &automation_shared::events::ID_NAMESPACE,
                &[self.routing_key.as_bytes(), b"\n", self.body].concat(),
            )
            .to_string()
        })
    }
}

pub fn attempt_of(properties: &BasicProperties) -> u32 {
    int_header(properties, headers::ATTEMPT).and_then(|a| u32::try_from(a).ok()).filter(|a| *a >= 1).unwrap_or(1)
}

/// The routing key the message was published with, surviving trips through retry queues.
pub fn original_routing_key(properties: &BasicProperties, delivered_with: &str, system: &SystemUsers) -> String {
    // Only a copy the system made says where it was first sent; an outsider's header would let
    // it pick the routing key its topic permissions were checked against.
    let ours = system.published(properties);
    ours.then(|| header(properties, headers::ORIGINAL_ROUTING_KEY))
        .flatten()
        .unwrap_or_else(|| delivered_with.to_string())
}

fn with_failure(history: &mut Vec<Failure>, attempt: u32, kind: &str, error: &str) {
    history.push(Failure {
        attempt,
        at: Utc::now(),
        kind: kind.to_string(),
        error: error.chars().take(MAX_ERROR_CHARS).collect(),
    });
    if history.len() > MAX_HISTORY {
        history.drain(..history.len() - MAX_HISTORY);
    }
}

/// Sends the message to the retry queue for its attempt (one of `delays`, the last for every
/// attempt after); it returns to the work queue after the delay as attempt `attempt + 1`. Returns
/// the delay.
pub async fn retry_later(
    broker: &Broker,
    delays: &[u64],
    message: &Unapplied<'_>,
    kind: &str,
    error: &str,
) -> Result<u64, PublishError> {
    let attempt = message.attempt();
    let delay = delays[(attempt as usize - 1).min(delays.len() - 1)];
    let properties = retried_properties(message, attempt, kind, error, &broker.system_users);
    let queue = broker.names.retry_queue(message.queue, delay);
    broker
        .publisher
        .publish(Outgoing { exchange: "", routing_key: &queue, body: message.body, properties, mandatory: true })
        .await?;
    Ok(delay)
}

/// The message's properties for its next attempt after failing attempt `attempt`: the attempt
/// counter, the original routing key, and the failure added to the history.
pub fn retried_properties(
    message: &Unapplied<'_>,
    attempt: u32,
    kind: &str,
    error: &str,
    system: &SystemUsers,
) -> BasicProperties {
    let mut history = message.history();
    with_failure(&mut history, attempt, kind, error);
    let mut properties = republished(message.properties, system);
    properties = messaging::set_int_header(properties, headers::ATTEMPT, i64::from(attempt) + 1);
    properties = messaging::set_header(properties, headers::ORIGINAL_ROUTING_KEY, message.routing_key);
    properties = messaging::set_header(properties, headers::FIRST_FAILED_AT, message.first_failed_at().to_rfc3339());
    properties =
        messaging::set_header(properties, headers::HISTORY, serde_json::to_string(&history).unwrap_or_default());
    properties.with_delivery_mode(messaging::PERSISTENT)
}

/// Why a message is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathKind {
    /// It can never be taken (bad JSON, unknown type, invalid data, ...).
    Poison,
    /// It failed transiently on every attempt.
    Exhausted,
}

impl DeathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeathKind::Poison => "poison",
            DeathKind::Exhausted => "exhausted",
        }
    }
}

/// Publishes the message, whole, to the dead-letter exchange with its reason and history.
pub async fn dead_letter(
    broker: &Broker,
    message: &Unapplied<'_>,
    kind: DeathKind,
    reason: &str,
    last_failure: Option<(&str, &str)>,
) -> Result<Uuid, PublishError> {
    let attempt = message.attempt();
    let mut history = message.history();
    if let Some((failure_kind, error)) = last_failure {
        with_failure(&mut history, attempt, failure_kind, error);
    }
    // Derived, so dead-lettering the same delivery again (a crash before the ack) stores it once.
    let replays = header(message.properties, automation_shared::dead_letters::REPLAY_COUNT_HEADER).unwrap_or_default();
    let id = derived_id(
        &format!("dead:{}:{}:{attempt}:{replays}", broker.names.work_queue(message.queue), kind.as_str()),
        &message.identity(),
    );
    let mut properties = republished(message.properties, &broker.system_users);
    let mut set = |name: &str, value: String| {
        properties = messaging::set_header(std::mem::take(&mut properties), name, value);
    };
    set(headers::DEAD_LETTER_ID, id.to_string());
    set(headers::DEAD_REASON, reason.chars().take(2000).collect());
    set(headers::ERROR_KIND, kind.as_str().to_string());
    set(headers::ORIGIN_QUEUE, broker.names.work_queue(message.queue));
    set(headers::ORIGINAL_ROUTING_KEY, message.routing_key.to_string());
    set(headers::FIRST_FAILED_AT, message.first_failed_at().to_rfc3339());
    set(headers::DEAD_AT, Utc::now().to_rfc3339());
    set(headers::HISTORY, serde_json::to_string(&history).unwrap_or_default());
    if let Some(event_id) = message.event_id {
        set(headers::EVENT_ID, event_id.to_string());
    }
    if let Some(event_type) = message.event_type {
        set(headers::EVENT_TYPE, event_type.to_string());
    }
    let properties = messaging::set_int_header(properties, headers::ATTEMPT, i64::from(attempt));
    let exchange = broker.names.dead();
    broker
        .publisher
        .publish(Outgoing {
            exchange: &exchange,
            routing_key: message.routing_key,
            body: message.body,
            properties,
            mandatory: true,
        })
        .await?;
    Ok(id)
}

/// A message's properties for publishing it again over the worker's connection: as the system,
/// still marked with whoever first sent it (see `Origin`).
pub fn republished(properties: &BasicProperties, system: &SystemUsers) -> BasicProperties {
    Origin::of(properties, system).stamp(properties.clone(), system)
}

/// Reads the history header of a dead message.
pub fn history_of(properties: &BasicProperties) -> Option<Value> {
    header(properties, headers::HISTORY).and_then(|h| serde_json::from_str(&h).ok())
}
