//! One module per event type: its handler ([`EventHandler`]) says the entity key its events are
//! ordered by, the rows it reads and its decision; `event_handlers!` dispatches to them.
//!
//! A handler is a decision: it reads the entities the batch loaded (and locked) for it, refuses
//! ([`Rejection`]) or changes them in memory, and says what it changed ([`Applied`]). It touches
//! no database: the batch writes every change with multi-row statements, plus the audit record,
//! the notification and the inbox row of each event. A refusal changes nothing, by
//! construction. Handlers are idempotent through the inbox: they never run twice for one event id
//! in a committed transaction.

mod approval_decided;
mod approval_escalate;
mod approval_requested;
mod audit_recorded;
mod automation_cancelled;
mod automation_requested;
mod rule_deleted;
mod rule_upserted;
mod workflow_created;
mod workflow_status_changed;

use automation_shared::db::audit::ActorType;
use automation_shared::db::events::OutboxMessage;
use automation_shared::events::{Envelope, EventData, NotificationType, RejectCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::entities::{Entities, Needs};
use crate::tasks::Registry;

/// A business "no": recorded, audited, announced as `event.rejected`, acked, never retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub reason: String,
}

pub fn reject(code: RejectCode, reason: impl Into<String>) -> Rejection {
    Rejection { code, reason: reason.into() }
}

/// What an applied event changed.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The entity kind (`approval`, `workflow`, `rule`, `automation_run`, or the entity an
    /// `audit.recorded` names) and its id.
    pub entity: String,
    pub entity_id: String,
    /// The notification announcing it.
    pub notification: NotificationType,
    /// The entity after the change: the notification's `data` and the rules' `entity`.
    pub state: Value,
    /// The audit record's action and details.
    pub audit_action: String,
    pub audit_details: Option<Value>,
}

impl Applied {
    pub fn new(
        entity: &str,
        entity_id: impl ToString,
        notification: NotificationType,
        state: &impl Serialize,
    ) -> Applied {
        Applied {
            entity: entity.to_string(),
            entity_id: entity_id.to_string(),
            notification,
            state: serde_json::to_value(state).unwrap_or(Value::Null),
            audit_action: notification.as_str().to_string(),
            audit_details: None,
        }
    }

    pub fn with_audit_details(mut self, details: Value) -> Applied {
        self.audit_details = Some(details);
        self
    }
}

/// What a handler works with.
pub struct Context<'a> {
    /// What the batch loaded; changes are written back after every handler ran.
    pub entities: &'a mut Entities,
    pub envelope: &'a Envelope,
    pub now: DateTime<Utc>,
    pub registry: &'a Registry,
    /// Messages beyond the notification (a run to start), written to the outbox with the rest.
    pub outbox: &'a mut Vec<OutboxMessage>,
}

impl Context<'_> {
    /// Who to name as having done this: the user or service, or `rule:<id>` for a rule.
    pub fn actor(&self) -> Option<String> {
        let envelope = self.envelope;
        match (envelope.actor_type, envelope.actor_id.as_deref()) {
            (ActorType::Rule, Some(id)) => Some(format!("rule:{id}")),
            (_, actor) => actor.map(str::to_string),
        }
    }
}

/// The entity an event is about. Events with the same key are applied in the order they entered
/// the queue (docs/architecture.md, "Ordering"); each handler module says what its key is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityKey(String);

impl EntityKey {
    /// `kind:id`, e.g. `approval:5b6f…`.
    pub fn new(kind: &str, id: impl std::fmt::Display) -> EntityKey {
        EntityKey(format!("{kind}:{id}"))
    }

    /// An entity named by a publisher (`audit.recorded`): `entity:entityId` when that is short
    /// ASCII (so an audit note on an approval is ordered with the approval), else a derived id.
    pub fn named(entity: &str, entity_id: &str) -> EntityKey {
        if entity.is_ascii() && entity_id.is_ascii() && entity.len() + entity_id.len() < 150 {
            EntityKey(format!("{entity}:{entity_id}"))
        } else {
            EntityKey::new("named", automation_shared::events::derived_id(entity, entity_id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its partition among `partitions`: FNV-1a of the key, the same in every process and
    /// version (changing it would move keys between partitions).
    pub fn partition(&self, partitions: u16) -> u16 {
        partition_of(self.0.as_bytes(), partitions)
    }
}

/// FNV-1a (64 bits) of `bytes`, modulo `partitions`.
pub fn partition_of(bytes: &[u8], partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u16
}

/// One inbound event type, declared in its own module: the entity its events are ordered by,
/// the rows it reads, and its decision. Adding a type is its data in `shared/src/events`, its
/// module here, and one row of `event_handlers!` below (the `match`es it generates are
/// exhaustive, so a type without a handler does not compile).
pub trait EventHandler {
    type Data;
    /// It creates the entity of its key, so it may pass events on that key that wait for an
    /// entity: they may wait for just this one (docs/architecture.md, "Ordering").
    const CREATES: bool = false;
    /// A `not_found` from it may mean the entity is still on its way, so it waits for it. Off for
    /// an event that must not be passed by the event that creates the entity (a delete).
    const WAITS: bool = true;
    /// The entity its events are ordered by.
    fn key(event_id: &str, data: &Self::Data) -> EntityKey;
    /// The rows it reads, loaded and locked for the whole batch before any handler runs. Ids the
    /// publisher left out are derived exactly as `handle` derives them.
    fn needs(event_id: &str, data: &Self::Data, needs: &mut Needs);
    /// The decision, in memory: refuse, or change the batch's entities and say what changed.
    fn handle(ctx: &mut Context<'_>, data: &Self::Data) -> Result<Applied, Rejection>;
}

macro_rules! event_handlers {
    ($($variant:ident => $module:ident;)+) => {
        /// The entity an event is ordered by.
        pub fn entity_key(envelope: &Envelope) -> EntityKey {
            match &envelope.data {
                $(EventData::$variant(data) => <$module::Handler as EventHandler>::key(&envelope.scoped_id(), data),)+
            }
        }

        /// Does the event create the entity of its key?
        pub fn creates_its_entity(envelope: &Envelope) -> bool {
            match &envelope.data {
                $(EventData::$variant(_) => <$module::Handler as EventHandler>::CREATES,)+
            }
        }

        /// Does a `not_found` make the event wait for the entity?
        pub fn waits_for_what_it_names(envelope: &Envelope) -> bool {
            match &envelope.data {
                $(EventData::$variant(_) => <$module::Handler as EventHandler>::WAITS,)+
            }
        }

        /// Notes the rows the event reads.
        pub fn needs(envelope: &Envelope, needs: &mut Needs) {
            match &envelope.data {
                $(EventData::$variant(data) => <$module::Handler as EventHandler>::needs(&envelope.scoped_id(), data, needs),)+
            }
        }

        /// Applies the event in memory.
        pub fn dispatch(ctx: &mut Context<'_>) -> Result<Applied, Rejection> {
            let envelope = ctx.envelope;
            let _span = crate::spans::handler(envelope).entered();
            match &envelope.data {
                $(EventData::$variant(data) => <$module::Handler as EventHandler>::handle(ctx, data),)+
            }
        }
    };
}

event_handlers! {
    WorkflowCreated => workflow_created;
    WorkflowStatusChanged => workflow_status_changed;
    ApprovalRequested => approval_requested;
    ApprovalDecided => approval_decided;
    ApprovalEscalate => approval_escalate;
    AuditRecorded => audit_recorded;
    RuleUpserted => rule_upserted;
    RuleDeleted => rule_deleted;
    AutomationRequested => automation_requested;
    AutomationCancelled => automation_cancelled;
}

/// Refuses a stale `expectedVersion`.
pub fn check_version(entity: &str, current: u32, expected: Option<u32>) -> Result<(), Rejection> {
    match expected {
        Some(expected) if expected != current => Err(reject(
            RejectCode::VersionConflict,
            format!("the {entity} is at version {current}, not the expected {expected}; read it again and retry"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_partition() {
        let key = EntityKey::new("approval", "5b6f2a1e-8c4d-4f0b-9a7e-3d2c1b0a9f8e");
        // Fixed values: a change here moves keys between partitions of running systems.
        assert_eq!(partition_of(b"", 16), (0xcbf2_9ce4_8422_2325_u64 % 16) as u16);
        assert_eq!(key.partition(16), key.partition(16));
        assert!(key.partition(16) < 16);
        assert_eq!(key.partition(1), 0);
    }

    #[test]
    fn keys_spread_over_the_partitions() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[usize::from(EntityKey::new("approval", uuid::Uuid::from_u128(i)).partition(16))] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn an_audit_note_on_an_approval_shares_the_approval_key() {
        let id = uuid::Uuid::from_u128(7);
        assert_eq!(EntityKey::named("approval", &id.to_string()), EntityKey::new("approval", id));
        assert!(EntityKey::named("invoice", "ü-42").as_str().starts_with("named:"));
    }
}
