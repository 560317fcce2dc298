//! Applying a batch of events in one transaction: the inbox decides what is a duplicate, the
//! entities the events name are loaded and locked (one query per table), each handler decides
//! in memory, and then the entity changes, audit records, notifications and inbox rows are
//! written with multi-row statements before one commit. A failure of any statement rolls the
//! whole batch back, and the consumer decides what to do from the error.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use automation_shared::db::audit::{ActorType, AuditChain, NewRecord, Staged};
use automation_shared::db::events::{self as event_rows, InboxEntry, OutboxMessage, Outcome as RowOutcome};
use automation_shared::db::{self, Failure};
use automation_shared::events::Envelope;
use automation_shared::events::envelope::MAX_CHAIN_DEPTH;
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde_json::json;
use sqlx::MySqlPool;

use crate::announce::{self, Cause};
use crate::entities::{Entities, Needs};
use crate::handlers::{self, Context, RejectCode, Rejection, reject};
use crate::rules::RuleSet;
use crate::tasks::Registry;

/// One event of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    pub envelope: &'a Envelope,
    pub received_at: DateTime<Utc>,
    /// It failed before: its retry bookkeeping is cleared when it commits.
    pub retried: bool,
    /// It may have been seen before (redelivered, or retried): looked up in the inbox first.
    pub suspect: bool,
}

/// What a committed batch did: each event's outcome, and the outbox messages it wrote (to be
/// published at once by the relay).
#[derive(Debug)]
pub struct Committed {
    pub outcomes: Vec<Outcome>,
    pub outbox: Vec<OutboxMessage>,
}

/// What became of an event whose batch committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected,
    /// Already in the inbox (or twice in this batch): skipped.
    Duplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::Duplicate => "duplicate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{source}")]
    Database {
        failure: Failure,
        #[source]
        source: sqlx::Error,
    },
    #[error("the handler panicked: {message}")]
    Panic { message: String },
}

impl BatchError {
    pub fn failure(&self) -> Failure {
        match self {
            BatchError::Database { failure, .. } => *failure,
            BatchError::Panic { .. } => Failure::Other,
        }
    }

    /// `transient` for what should pass on its own (lock conflicts, a lost race), `bug` for what
    /// needs a fix (a failing statement, a panic).
    pub fn kind(&self) -> &'static str {
        match self.failure() {
            Failure::Conflict | Failure::Duplicate | Failure::Unavailable => "transient",
            Failure::Other => "bug",
        }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(source: sqlx::Error) -> Self {
        BatchError::Database { failure: db::classify(&source), source }
    }
}

/// Applies `items` in one transaction. On success the audit chain advances; on failure nothing
/// was committed (or, if the commit itself failed, the chain is abandoned because whether it
/// committed is unknown).
///
/// Only suspect items are looked up in the inbox first, unless `check_all`: a duplicate nobody
/// suspected fails the inbox insert, and the caller runs the batch again with `check_all`.
pub async fn apply(
    pool: &MySqlPool,
    registry: &Registry,
    chain: &mut AuditChain,
    rules: &mut RuleSet,
    items: &[Item<'_>],
    check_all: bool,
) -> Result<Committed, BatchError> {
    let progress = Progress::default();
    let work = AssertUnwindSafe(apply_inner(pool, registry, chain, rules, items, check_all, &progress)).catch_unwind();
    match work.await {
        Ok(Ok((committed, staged))) => {
            chain.advance(&staged);
            Ok(committed)
        }
        Ok(Err(error)) => {
            if progress.committing.load(Ordering::Relaxed) {
                chain.abandon();
            }
            Err(error)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let item = progress.current.load(Ordering::Relaxed);
            tracing::error!(
                event.id = items.get(item).map(|i| i.envelope.id.as_str()),
                panic = %message,
                "an event handler panicked; the batch was rolled back"
            );
            Err(BatchError::Panic { message })
        }
    }
}

/// How far a batch got, readable after a panic or an error.
#[derive(Default)]
struct Progress {
    /// The item being handled.
    current: AtomicUsize,
    /// Set just before the commit: from then on its outcome is unknown, so the audit chain must be reloaded.
    committing: AtomicBool,
}

async fn apply_inner(
    pool: &MySqlPool,
    registry: &Registry,
    chain: &AuditChain,
    rules: &mut RuleSet,
    items: &[Item<'_>],
    check_all: bool,
    progress: &Progress,
) -> Result<(Committed, Staged), BatchError> {
    let mut tx = pool.begin().await?;
    let ids: Vec<&str> = items.iter().filter(|i| check_all || i.suspect).map(|i| i.envelope.id.as_str()).collect();
    let seen = event_rows::already_processed(&mut tx, &ids).await?;
    let now = Utc::now();
    let mut staged = chain.stage();
    let mut outbox = Vec::with_capacity(items.len());
    let mut inbox = Vec::with_capacity(items.len());
    let mut outcomes = Vec::with_capacity(items.len());
    let mut in_batch = HashSet::with_capacity(items.len());
    let mut retried = Vec::new();
    let mut needs = Needs::default();
    for item in items.iter().filter(|i| !seen.contains(&i.envelope.id)) {
        needs.add(item.envelope);
    }
    let mut entities = Entities::load(&mut tx, &needs).await?;
    rules.refresh(&mut tx).await?;

    for (index, item) in items.iter().enumerate() {
        progress.current.store(index, Ordering::Relaxed);
        let envelope = item.envelope;
        if seen.contains(&envelope.id) || !in_batch.insert(envelope.id.as_str()) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        if item.retried {
            retried.push(envelope.id.as_str());
        }
        let result = if envelope.chain_depth > MAX_CHAIN_DEPTH {
            Err(reject(
                RejectCode::ChainTooDeep,
                format!(
                    "this event was caused by a chain of {} rule-caused events; the limit is {MAX_CHAIN_DEPTH}",
                    envelope.chain_depth
                ),
            ))
        } else {
            let mut ctx = Context { entities: &mut entities, envelope, now, registry, outbox: &mut outbox };
            handlers::dispatch(&mut ctx)
        };
        let mut entry = InboxEntry {
            event_id: envelope.id.clone(),
            event_type: envelope.event_type.as_str().to_string(),
            source: truncate(&envelope.source, 255),
            actor_id: envelope.actor_id.clone(),
            actor_type: envelope.actor_type.clone(),
            correlation_id: envelope.correlation_id.clone(),
            causation_id: envelope.causation_id.clone(),
            chain_depth: envelope.chain_depth,
            outcome: RowOutcome::Applied,
            reason_code: None,
            reason: None,
            entity: None,
            entity_id: None,
            rules: None,
            received_at: item.received_at,
            processed_at: now,
        };
        match result {
            Ok(applied) => {
                let fired = rules.evaluate(envelope, &applied);
                staged.push(NewRecord {
                    entity: applied.entity.clone(),
                    entity_id: applied.entity_id.clone(),
                    action: applied.audit_action,
                    actor_id: envelope.actor_id.clone(),
                    actor_type: ActorType::parse(&envelope.actor_type),
                    event_id: Some(envelope.id.clone()),
                    correlation_id: Some(envelope.correlation_id.clone()),
                    details: applied.audit_details,
                });
                outbox.push(announce::notification(&Cause::from(envelope), applied.notification, applied.state));
                outbox.extend(fired.outbox);
                for (rule_id, details) in fired.matched {
                    staged.push(NewRecord {
                        entity: "rule".into(),
                        entity_id: rule_id.to_string(),
                        action: "rule.fired".into(),
                        actor_id: Some(rule_id.to_string()),
                        actor_type: ActorType::Rule,
                        event_id: Some(envelope.id.clone()),
                        correlation_id: Some(envelope.correlation_id.clone()),
                        details: Some(details),
                    });
                }
                if !fired.evaluations.is_empty() {
                    entry.rules = serde_json::to_value(&fired.evaluations).ok();
                }
                entry.entity = Some(applied.entity);
                entry.entity_id = Some(applied.entity_id);
                outcomes.push(Outcome::Applied);
            }
            Err(Rejection { code, reason }) => {
                staged.push(NewRecord {
                    entity: "event".into(),
                    entity_id: truncate(&envelope.id, 64),
                    action: "rejected".into(),
                    actor_id: envelope.actor_id.clone(),
                    actor_type: ActorType::parse(&envelope.actor_type),
                    event_id: Some(envelope.id.clone()),
                    correlation_id: Some(envelope.correlation_id.clone()),
                    details: Some(
                        json!({"type": envelope.event_type.as_str(), "code": code.as_str(), "reason": reason}),
                    ),
                });
                outbox.push(announce::rejection(envelope, code.as_str(), &reason));
                entry.outcome = RowOutcome::Rejected;
                entry.reason_code = Some(code.as_str().to_string());
                entry.reason = Some(reason);
                outcomes.push(Outcome::Rejected);
            }
        }
        inbox.push(entry);
    }

    entities.write(&mut tx).await?;
    staged.write(&mut tx).await?;
    event_rows::insert_outbox(&mut tx, &outbox).await?;
    event_rows::insert_inbox(&mut tx, &inbox).await?;
    event_rows::clear_attempts(&mut tx, &retried).await?;
    progress.committing.store(true, Ordering::Relaxed);
    tx.commit().await?;
    #[cfg(feature = "fault-injection")]
    crate::faults::after_commit();
    Ok((Committed { outcomes, outbox }, staged))
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}
