//! The deferral store (docs/architecture.md, "Ordering"): events that must wait, kept in MySQL
//! behind their entity key so nothing on that key overtakes them, and applied from there in
//! their order. An event waits for an entity it names that does not exist yet (up to
//! `entity_wait_ms`), or for another attempt after a transient failure (the retry delays, up to
//! `max_attempts`, then it is dead-lettered and its successors go on). Every worker sweeps the
//! store; the hold rows, locked by whoever applies a key's events, make them take turns.

use std::collections::BTreeMap;
use std::time::Duration;

use automation_shared::db::deferrals::{self, Deferred, DeferredState, NewDeferred};
use automation_shared::events::envelope::Limits;
use automation_shared::events::{Envelope, WorkQueue};
use automation_shared::messaging::{self, SystemUsers};
use chrono::Utc;
use lapin::BasicProperties;
use tokio_util::sync::CancellationToken;

use crate::apply::{BatchError, Item, Message, Ordered, WAIT_POLL};
use crate::consumer::{Applier, ApplyContext};
use crate::failures::{self, DeathKind, Unapplied, headers};
use crate::handlers::{self, EntityKey};

/// Held keys taken per sweep.
const KEYS_PER_SWEEP: u32 = 64;
/// Stored events applied per sweep (one transaction): a key with more is continued next sweep.
const EVENTS_PER_SWEEP: u32 = 1_000;
/// How often the number of waiting events is counted for `/metrics`.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// What became of an event that failed in order.
pub enum SetAside {
    /// It waits in the store for its next attempt, holding its key.
    Deferred,
    /// It has no attempt left: the caller dead-letters it, and its successors go on.
    OutOfAttempts,
}

/// Sets a fresh event that failed aside: it waits for its next attempt in the store, holding its
/// key, so the events after it on that key queue behind it. Waits out database outages; `None`
/// when shutdown came first.
pub async fn defer_failed(
    context: &ApplyContext,
    item: &Item<'_>,
    ordered: &Ordered<'_>,
    error: &BatchError,
    shutdown: &CancellationToken,
) -> Option<sqlx::Result<SetAside>> {
    if ordered.attempt >= context.settings.max_attempts {
        return Some(Ok(SetAside::OutOfAttempts));
    }
    let (kind, text) = (error.kind(), error.to_string());
    let delay = retry_delay(&context.settings.retry_delays_ms, ordered.attempt);
    let due = Utc::now() + chrono::Duration::milliseconds(delay as i64);
    let properties = with_failure(
        ordered.message.properties,
        ordered.message.routing_key,
        ordered.attempt,
        kind,
        &text,
        &context.broker.system_users,
    );
    let event = NewDeferred {
        entity_key: ordered.key.as_str().to_string(),
        partition: ordered.partition,
        event_id: item.envelope.id.clone(),
        event_type: item.envelope.event_type.as_str().to_string(),
        routing_key: ordered.message.routing_key.to_string(),
        properties: serde_json::to_value(&properties).unwrap_or_default(),
        body: ordered.message.body.to_vec(),
        attempt: ordered.attempt + 1,
        state: DeferredState::Retrying,
        detail: Some(text.clone()),
        not_before: due,
        wait_until: ordered.wait_until,
        received_at: item.received_at,
    };
    let stored = context
        .database
        .through_outages(shutdown, || async {
            let mut tx = context.database.pool.begin().await?;
            deferrals::hold_and_queue(&mut tx, &event).await?;
            automation_shared::db::events::record_attempt(
                &mut *tx,
                item.envelope.event_ref(),
                Some(item.envelope.event_type.as_str()),
                ordered.attempt,
                kind,
                &text,
                Some(due),
            )
            .await?;
            tx.commit().await
        })
        .await?;
    Some(stored.map(|()| {
        tracing::warn!(event.id = %item.envelope.id, attempt = ordered.attempt, retry.in_ms = delay, error = %text, "event failed; it waits for its next attempt, and the events after it on its entity wait behind it");
        metrics::counter!(automation_shared::meters::WORKER_RETRIES, "kind" => kind).increment(1);
        SetAside::Deferred
    }))
}

/// The delay before the attempt after `attempt`: one of `delays`, the last for every attempt
/// after.
fn retry_delay(delays: &[u64], attempt: u32) -> u64 {
    delays[(attempt as usize).saturating_sub(1).min(delays.len() - 1)]
}

/// The properties with this failure added to the history header, as a retry queue would carry
/// them.
fn with_failure(
    properties: &BasicProperties,
    routing_key: &str,
    attempt: u32,
    kind: &str,
    error: &str,
    system: &SystemUsers,
) -> BasicProperties {
    let message =
        Unapplied { queue: WorkQueue::Commands, routing_key, properties, body: &[], event_id: None, event_type: None };
    failures::retried_properties(&message, attempt, kind, error, system)
}

/// Applies due events from the store until `stop`.
pub async fn run(context: ApplyContext, stop: CancellationToken) {
    let mut applier = Applier::new(context.clone(), WorkQueue::Commands, true);
    let mut idle = true;
    let mut counted = tokio::time::Instant::now();
    loop {
        if counted.elapsed() >= BACKLOG_EVERY {
            counted = tokio::time::Instant::now();
            if let Ok(waiting) = deferrals::backlog(&context.database.pool).await {
                metrics::gauge!(automation_shared::meters::WORKER_DEFERRED_EVENTS).set(waiting as f64);
            }
        }
        let pause = if idle { WAIT_POLL / 2 } else { Duration::ZERO };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        idle = match sweep(&context, &mut applier, &stop).await {
            Ok(applied) => applied == 0,
            Err(error) => {
                tracing::debug!(%error, "could not sweep the deferral store this time");
                true
            }
        };
    }
}

/// One stored event, read back.
struct Stored {
    row: Deferred,
    partition: u16,
    envelope: Envelope,
    properties: BasicProperties,
    key: EntityKey,
}

/// One pass over the due keys. Returns how many stored events it handled.
async fn sweep(context: &ApplyContext, applier: &mut Applier, stop: &CancellationToken) -> sqlx::Result<usize> {
    let keys = deferrals::due_keys(&context.database.pool, KEYS_PER_SWEEP).await?;
    if keys.is_empty() {
        return Ok(0);
    }
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let rows = {
        let mut conn = context.database.pool.acquire().await?;
        deferrals::queued(&mut conn, &key_refs, EVENTS_PER_SWEEP).await?
    };
    let limits = context.broker.limits();
    let mut stored = Vec::with_capacity(rows.len());
    for row in rows {
        let properties: BasicProperties = serde_json::from_value(row.properties.0.clone()).unwrap_or_default();
        match Envelope::parse(&row.routing_key, &properties, &row.body, limits) {
            Ok(envelope) => {
                let key = handlers::entity_key(&envelope);
                let partition = key.partition(context.settings.partitions);
                stored.push(Stored { row, partition, envelope, properties, key });
            }
            // It was read once; only a change of configuration (a lower size limit, a narrower
            // publisher list) makes it unreadable now.
            Err(poison) => {
                let reason = format!("unreadable after waiting: {poison}");
                bury(context, &row, &properties, DeathKind::Poison, &reason, None).await?;
            }
        }
    }
    let handled = stored.len();
    let items: Vec<Item<'_>> = stored.iter().map(item).collect();
    match applier.apply_one_batch(&items, stop).await {
        None | Some(Ok(_)) => return Ok(handled),
        Some(Err(error)) => {
            tracing::warn!(%error, events = items.len(), "applying stored events failed; applying them key by key");
        }
    }
    // Key by key, in order; the first failure of a key stops that key.
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, s) in stored.iter().enumerate() {
        by_key.entry(s.key.as_str()).or_default().push(index);
    }
    for indices in by_key.values() {
        // Set once an event of the key waits again: the events behind it stay, but for one that
        // creates the entity of the key while what waits does not (as in a batch, `apply.rs`).
        let mut waiting: Option<bool> = None;
        let now = Utc::now();
        for index in indices {
            let row = &stored[*index].row;
            if row.state == DeferredState::Retrying.as_str() && row.not_before > now {
                // Its next attempt is not due: nothing behind it passes it.
                waiting = Some(true);
                continue;
            }
            let creates = handlers::creates_its_entity(&stored[*index].envelope);
            if let Some(waiting_creates) = waiting
                && (waiting_creates || !creates)
            {
                continue;
            }
            match applier.apply_one_batch(std::slice::from_ref(&items[*index]), stop).await {
                None => return Ok(handled),
                // It waits again: the events behind it on its key stay behind it.
                Some(Ok(outcomes)) if outcomes.first() == Some(&crate::apply::Outcome::Deferred) => {
                    // Once a creator waits, nothing passes any more.
                    waiting = Some(waiting.unwrap_or(false) || creates);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    failed(context, &stored[*index], &error).await?;
                    break;
                }
            }
        }
    }
    Ok(handled)
}

fn item(s: &Stored) -> Item<'_> {
    Item {
        envelope: &s.envelope,
        received_at: s.row.received_at,
        retried: s.row.attempt > 1,
        suspect: true,
        order: Some(Ordered {
            key: &s.key,
            partition: s.partition,
            maybe_held: true,
            message: Message { routing_key: &s.row.routing_key, properties: &s.properties, body: &s.row.body },
            deferred: Some(s.row.seq),
            attempt: s.row.attempt,
            wait_until: s.row.wait_until,
            retry_at: (s.row.state == DeferredState::Retrying.as_str()).then_some(s.row.not_before),
        }),
    }
}

/// A stored event failed again: its next attempt later, or the dead-letter store when it has
/// none left (its successors then go on).
async fn failed(context: &ApplyContext, s: &Stored, error: &BatchError) -> sqlx::Result<()> {
    let (kind, text) = (error.kind(), error.to_string());
    let attempt = s.row.attempt;
    if attempt >= context.settings.max_attempts {
        tracing::error!(event.id = %s.envelope.id, attempts = attempt, error = %text, "giving up on an event; the events after it on its entity go on");
        metrics::counter!(automation_shared::meters::WORKER_DEAD_LETTERED, "kind" => "exhausted", "reason" => kind)
            .increment(1);
        let reason = format!("gave up after {attempt} attempts: {text}");
        return bury(context, &s.row, &s.properties, DeathKind::Exhausted, &reason, Some((kind, &text))).await;
    }
    let delay = retry_delay(&context.settings.retry_delays_ms, attempt);
    let due = Utc::now() + chrono::Duration::milliseconds(delay as i64);
    let properties =
        with_failure(&s.properties, &s.row.routing_key, attempt, kind, &text, &context.broker.system_users);
    let properties = serde_json::to_value(&properties).unwrap_or_default();
    let mut tx = context.database.pool.begin().await?;
    // The hold first: a lane queueing behind it meanwhile is then either committed (and seen
    // below) or waits for this transaction.
    deferrals::lock_held(&mut tx, &[s.row.entity_key.as_str()]).await?;
    // Another worker's sweep may have applied it since this attempt failed (the lock it met was
    // let go meanwhile): then there is nothing to put off, and an attempt noted now would outlive
    // the event.
    if deferrals::present(&mut tx, &[s.row.seq]).await?.is_empty() {
        return tx.commit().await;
    }
    tracing::warn!(event.id = %s.envelope.id, attempt, retry.in_ms = delay, error = %text, "a waiting event failed again; it waits for its next attempt");
    metrics::counter!(automation_shared::meters::WORKER_RETRIES, "kind" => kind).increment(1);
    deferrals::postpone(
        &mut tx,
        s.row.seq,
        Some(attempt + 1),
        DeferredState::Retrying,
        Some(&text),
        due,
        Some(&properties),
    )
    .await?;
    deferrals::refresh_holds(&mut tx, &[s.row.entity_key.as_str()]).await?;
    automation_shared::db::events::record_attempt(
        &mut *tx,
        s.envelope.event_ref(),
        Some(s.envelope.event_type.as_str()),
        attempt,
        kind,
        &text,
        Some(due),
    )
    .await?;
    tx.commit().await
}

/// Dead-letters a stored event (published with a confirm first, so a crash before the delete
/// stores it again under the same id, once) and takes it out of the store, unless another
/// worker applied it meanwhile.
async fn bury(
    context: &ApplyContext,
    row: &Deferred,
    properties: &BasicProperties,
    kind: DeathKind,
    reason: &str,
    last_failure: Option<(&str, &str)>,
) -> sqlx::Result<()> {
    let properties = messaging::set_int_header(properties.clone(), headers::ATTEMPT, i64::from(row.attempt));
    let message = Unapplied {
        queue: WorkQueue::Commands,
        routing_key: &row.routing_key,
        properties: &properties,
        body: &row.body,
        event_id: Some(&row.event_id),
        event_type: Some(&row.event_type),
    };
    // The hold is locked while the dead letter goes out: no other worker's sweep applies the
    // event meanwhile, and one that applied it already is seen here (nothing to bury then).
    let mut tx = context.database.pool.begin().await?;
    deferrals::lock_held(&mut tx, &[row.entity_key.as_str()]).await?;
    if deferrals::present(&mut tx, &[row.seq]).await?.is_empty() {
        return tx.commit().await;
    }
    if let Err(error) = failures::dead_letter(&context.broker, &message, kind, reason, last_failure).await {
        tracing::warn!(%error, event.id = %row.event_id, "could not dead-letter a stored event; it stays in the store");
        return Ok(());
    }
    let mut gone = vec![row.seq];
    gone.extend(copies(context.broker.limits(), &mut tx, row, &properties).await?);
    deferrals::remove(&mut tx, &gone).await?;
    deferrals::refresh_holds(&mut tx, &[row.entity_key.as_str()]).await?;
    tx.commit().await
}

/// Copies of a buried event stored behind it (a redelivery or a sequencer's second publish that
/// came while it waited): they go with it. Left in the store, a copy would be applied later, after
/// the events that followed the original, and after the original was dead-lettered; the dead
/// letter is the one copy an operator replays.
async fn copies(
    limits: Limits<'_>,
    tx: &mut sqlx::MySqlConnection,
    row: &Deferred,
    properties: &BasicProperties,
) -> sqlx::Result<Vec<u64>> {
    let Ok(buried) = Envelope::parse(&row.routing_key, properties, &row.body, limits) else {
        // An unreadable event's copies are unreadable too, and are buried on their own.
        return Ok(Vec::new());
    };
    let mut copies = Vec::new();
    for other in deferrals::same_id(tx, &row.entity_key, &row.event_id, row.seq).await? {
        let other_properties: BasicProperties = serde_json::from_value(other.properties.0.clone()).unwrap_or_default();
        if let Ok(envelope) = Envelope::parse(&other.routing_key, &other_properties, &other.body, limits)
            && envelope.event_ref() == buried.event_ref()
        {
            tracing::info!(event.id = %row.event_id, "a copy of a dead-lettered event waited behind it; it goes with it");
            copies.push(other.seq);
        }
    }
    Ok(copies)
}
