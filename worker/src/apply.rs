//! Applying a batch of events in one transaction: the inbox decides what is a duplicate, the
//! entities the events name are loaded and locked (one query per table), each handler decides
//! in memory, and then the entity changes, audit records, notifications and inbox rows are
//! written with multi-row statements before one commit. A failure of any statement rolls the
//! whole batch back, and the consumer decides what to do from the error.
//!
//! In the partitioned layout each item also carries its entity key, and the batch keeps
//! per-entity order: an event whose key is held queues behind it, an event that names an entity
//! not created yet waits for it (holding its key), and events that waited are applied from the
//! deferral store in their order (docs/architecture.md, "Ordering").

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use automation_shared::db::audit::{ActorType, AuditChain, NewRecord, Staged};
use automation_shared::db::deferrals::{self, DeferredState, NewDeferred};
use automation_shared::db::events::{self as event_rows, EventRef, InboxEntry, OutboxMessage, Outcome as RowOutcome};
use automation_shared::db::{self, Failure};
use automation_shared::events::envelope::MAX_CHAIN_DEPTH;
use automation_shared::events::{Envelope, RejectCode};
use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde_json::json;
use sqlx::MySqlPool;

use crate::announce::{self, Cause};
use crate::entities::{Entities, Needs};
use crate::handlers::{self, Context, EntityKey, Rejection, reject};
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
    /// Per-entity order (the partitioned layout); `None` in the competing layout.
    pub order: Option<Ordered<'a>>,
}

/// What keeping an item in its entity's order needs.
#[derive(Debug, Clone, Copy)]
pub struct Ordered<'a> {
    pub key: &'a EntityKey,
    /// The key's partition.
    pub partition: u16,
    /// Its key may be held. `false` when its partition's consumer knows no key of the partition
    /// is: then the batch does not look.
    pub maybe_held: bool,
    /// The message as delivered, stored whole if it has to wait.
    pub message: Message<'a>,
    /// Its row in the deferral store when it comes from there; `None` when fresh from a
    /// partition queue.
    pub deferred: Option<u64>,
    /// The attempt it is.
    pub attempt: u32,
    /// Until when a `not_found` makes it wait rather than refuses it.
    pub wait_until: DateTime<Utc>,
    /// A stored event waiting for another attempt: not before then. `None` for a fresh event
    /// and for one that waits for an entity or behind another.
    pub retry_at: Option<DateTime<Utc>>,
}

/// A message whole: what the deferral store keeps.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub routing_key: &'a str,
    pub properties: &'a lapin::BasicProperties,
    pub body: &'a [u8],
}

/// How soon an event that waits for an entity is tried again.
pub const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(200);

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
    /// Waits in the deferral store: for an entity it names, or behind an earlier event on its
    /// key. Its delivery is settled; it will be applied from the store.
    Deferred,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rejected => "rejected",
            Outcome::Duplicate => "duplicate",
            Outcome::Deferred => "deferred",
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

    /// A deadlock or certification failure: running it again makes progress
    /// ([`db::always_resolves`]).
    pub fn always_resolves(&self) -> bool {
        matches!(self, BatchError::Database { source, .. } if db::always_resolves(source))
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
    let suspects: Vec<EventRef<'_>> =
        items.iter().filter(|i| check_all || i.suspect).map(|i| i.envelope.event_ref()).collect();
    let found = event_rows::already_processed(&mut tx, &suspects).await?;
    let found: HashSet<EventRef<'_>> = found.iter().map(|(id, source)| (id.as_str(), source.as_str())).collect();
    let seen = |envelope: &Envelope| found.contains(&envelope.event_ref());
    let now = Utc::now();
    let mut staged = chain.stage();
    let mut outbox = Vec::with_capacity(items.len());
    let mut inbox = Vec::with_capacity(items.len());
    let mut outcomes = Vec::with_capacity(items.len());
    let mut in_batch = HashSet::with_capacity(items.len());
    let mut retried = Vec::new();
    let mut needs = Needs::default();
    for item in items.iter().filter(|i| !seen(i.envelope)) {
        needs.add(item.envelope);
    }
    // Per-entity order: which keys are held (locked until the commit, so the deferral store's
    // sweeper and this batch take turns), and which stored events are still there to apply.
    let mut order = OrderState::default();
    let keys: BTreeSet<&str> = items
        .iter()
        .filter_map(|i| i.order.filter(|o| o.maybe_held || o.deferred.is_some()).map(|o| o.key.as_str()))
        .collect();
    if !keys.is_empty() {
        let keys: Vec<&str> = keys.into_iter().collect();
        for hold in deferrals::lock_held(&mut tx, &keys).await? {
            if hold.waiting {
                order.waiting.insert(hold.entity_key.clone());
            }
            order.held.insert(hold.entity_key);
        }
        let stored: Vec<u64> = items.iter().filter_map(|i| i.order.and_then(|o| o.deferred)).collect();
        order.present = deferrals::present(&mut tx, &stored).await?;
    }
    let mut entities = Entities::load(&mut tx, &needs).await?;
    rules.refresh(&mut tx).await?;

    // Per key, the last event of the batch that creates the entity of its key: an event whose
    // wait for that entity is over still waits while its creator is behind it here (it may
    // have spent its wait queued behind a retry on the key).
    let last_creator: HashMap<&str, usize> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| handlers::creates_its_entity(i.envelope))
        .filter_map(|(n, i)| i.order.map(|o| (o.key.as_str(), n)))
        .collect();
    for (index, item) in items.iter().enumerate() {
        progress.current.store(index, Ordering::Relaxed);
        let envelope = item.envelope;
        if let Some(ordered) = item.order
            && let Some(seq) = ordered.deferred
            && !order.present.contains(&seq)
        {
            // Applied from the store by another worker meanwhile.
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        if let Some(ordered) = item.order
            && ordered.retry_at.is_some_and(|due| due > now)
        {
            // Not due yet: it stays, and holds everything behind it on its key.
            order.not_due(&ordered);
            outcomes.push(Outcome::Deferred);
            continue;
        }
        if seen(envelope) || !in_batch.insert(envelope.event_ref()) {
            order.settled(item);
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        if let Some(ordered) = item.order
            && order.must_queue(&ordered, handlers::creates_its_entity(envelope))
        {
            order.queue_behind(&ordered, envelope, item.received_at, now);
            in_batch.remove(&envelope.event_ref());
            outcomes.push(Outcome::Deferred);
            continue;
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
        // A `not_found` may mean the entity's creating event is still on its way (on another
        // key): the event waits for it, holding its own key, until `wait_until`.
        if let (Err(rejection), Some(ordered)) = (&result, item.order)
            && rejection.code == RejectCode::NotFound
            && (now < ordered.wait_until || last_creator.get(ordered.key.as_str()).is_some_and(|n| *n > index))
            && handlers::waits_for_what_it_names(envelope)
        {
            order.wait(&ordered, envelope, item.received_at, now, &rejection.reason);
            in_batch.remove(&envelope.event_ref());
            outcomes.push(Outcome::Deferred);
            continue;
        }
        order.settled(item);
        if item.retried {
            retried.push(envelope.event_ref());
        }
        let mut entry = InboxEntry {
            event_id: envelope.id.clone(),
            event_type: envelope.event_type.as_str().to_string(),
            source: envelope.source.clone(),
            actor_id: envelope.actor_id.clone(),
            actor_type: envelope.actor_type.as_str().to_string(),
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
                    actor_type: envelope.actor_type,
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
                    actor_type: envelope.actor_type,
                    event_id: Some(envelope.id.clone()),
                    correlation_id: Some(envelope.correlation_id.clone()),
                    details: Some(
                        json!({"type": envelope.event_type.as_str(), "code": code.as_str(), "reason": reason}),
                    ),
                });
                outbox.push(announce::rejection(envelope, code, &reason));
                entry.outcome = RowOutcome::Rejected;
                entry.reason_code = Some(code);
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
    order.write(&mut tx).await?;
    progress.committing.store(true, Ordering::Relaxed);
    tracing::Instrument::instrument(tx.commit(), crate::spans::commit()).await?;
    #[cfg(feature = "fault-injection")]
    crate::faults::after_commit();
    Ok((Committed { outcomes, outbox }, staged))
}

/// What a batch does to keep per-entity order.
#[derive(Default)]
struct OrderState {
    /// Keys held when the batch began, or by an event of this batch that began to wait.
    held: HashSet<String>,
    /// Held keys whose first event waits for an entity (not for another attempt).
    waiting: HashSet<String>,
    /// Stored events (by seq) still in the store.
    present: HashSet<u64>,
    /// Keys whose stored event waits again in this batch: the stored events after it stay,
    /// except one that creates the entity of its key.
    blocked: HashSet<String>,
    /// Blocked keys whose waiting event itself creates the entity: nothing passes those.
    blocked_by_a_creator: HashSet<String>,
    new_holds: Vec<(String, u16, DateTime<Utc>)>,
    queued: Vec<NewDeferred>,
    /// Stored events that were applied, refused or found duplicate.
    done: Vec<u64>,
    /// Stored events that wait again: seq, detail, due.
    postponed: Vec<(u64, String, DateTime<Utc>)>,
    /// Keys of stored events this batch handled: their holds are refreshed.
    touched: BTreeSet<String>,
}

impl OrderState {
    /// A fresh event whose key is held, or a stored event behind one that waits again. An
    /// event that creates the entity of its key passes events that wait for an entity: they may
    /// be waiting for just that (a decision that reached the queue before its request). In the
    /// store too, so a request stored behind a decision (its key was held for a retry when it
    /// came) does not leave the decision waiting for it until `not_found`.
    fn must_queue(&self, ordered: &Ordered<'_>, creates: bool) -> bool {
        let key = ordered.key.as_str();
        match ordered.deferred {
            None => self.held.contains(key) && !(creates && self.waiting.contains(key)),
            Some(_) => self.blocked.contains(key) && (!creates || self.blocked_by_a_creator.contains(key)),
        }
    }

    /// Behind the events that wait on its key (a stored event simply stays where it is).
    fn queue_behind(
        &mut self,
        ordered: &Ordered<'_>,
        envelope: &Envelope,
        received_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        if ordered.deferred.is_none() {
            self.queued.push(new_deferred(ordered, envelope, received_at, now, None));
        }
    }

    /// It names an entity that does not exist yet: it waits, and holds its key.
    fn wait(
        &mut self,
        ordered: &Ordered<'_>,
        envelope: &Envelope,
        received_at: DateTime<Utc>,
        now: DateTime<Utc>,
        reason: &str,
    ) {
        let creates = handlers::creates_its_entity(envelope);
        let due = now + chrono::Duration::from_std(WAIT_POLL).unwrap_or_default();
        let key = ordered.key.as_str().to_string();
        match ordered.deferred {
            None => {
                if self.held.insert(key.clone()) {
                    self.waiting.insert(key.clone());
                    self.new_holds.push((key, ordered.partition, due));
                }
                self.queued.push(new_deferred(ordered, envelope, received_at, due, Some(reason)));
            }
            Some(seq) => {
                self.postponed.push((seq, reason.to_string(), due));
                self.touched.insert(key.clone());
                if creates {
                    self.blocked_by_a_creator.insert(key.clone());
                }
                self.blocked.insert(key);
            }
        }
    }

    /// A stored event whose next attempt is not due: nothing behind it on its key passes it.
    fn not_due(&mut self, ordered: &Ordered<'_>) {
        let key = ordered.key.as_str().to_string();
        self.blocked_by_a_creator.insert(key.clone());
        self.blocked.insert(key);
    }

    /// Applied, refused or a duplicate: a stored event leaves the store.
    fn settled(&mut self, item: &Item<'_>) {
        if let Some(ordered) = item.order
            && let Some(seq) = ordered.deferred
        {
            self.done.push(seq);
            self.touched.insert(ordered.key.as_str().to_string());
        }
    }

    async fn write(&self, conn: &mut sqlx::MySqlConnection) -> sqlx::Result<()> {
        let holds: Vec<(&str, u16, DateTime<Utc>, DeferredState)> =
            self.new_holds.iter().map(|(k, p, t)| (k.as_str(), *p, *t, DeferredState::Waiting)).collect();
        deferrals::insert(conn, &holds, &self.queued).await?;
        deferrals::remove(conn, &self.done).await?;
        for (seq, detail, due) in &self.postponed {
            deferrals::postpone(conn, *seq, None, DeferredState::Waiting, Some(detail), *due, None).await?;
        }
        let touched: Vec<&str> = self.touched.iter().map(String::as_str).collect();
        deferrals::refresh_holds(conn, &touched).await
    }
}

fn new_deferred(
    ordered: &Ordered<'_>,
    envelope: &Envelope,
    received_at: DateTime<Utc>,
    due: DateTime<Utc>,
    reason: Option<&str>,
) -> NewDeferred {
    NewDeferred {
        entity_key: ordered.key.as_str().to_string(),
        partition: ordered.partition,
        event_id: envelope.id.clone(),
        event_type: envelope.event_type.as_str().to_string(),
        routing_key: ordered.message.routing_key.to_string(),
        properties: serde_json::to_value(ordered.message.properties).unwrap_or_default(),
        body: ordered.message.body.to_vec(),
        attempt: ordered.attempt,
        // Only an event that waits for an entity may be passed by the event that creates it.
        state: if reason.is_some() { DeferredState::Waiting } else { DeferredState::Queued },
        detail: reason.map(str::to_string),
        not_before: due,
        wait_until: ordered.wait_until,
        received_at,
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}
