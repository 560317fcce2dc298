//! The consumer loop of a work queue. It takes deliveries in batches of up to N (or what
//! arrived within T ms), reads each into an envelope, applies the batch in one transaction, and
//! settles every delivery: acked after the commit, sent to a retry queue, or dead-lettered. Only
//! this module touches a `Delivery` and decides ack or nack.
//!
//! Failures are told apart here. Poison is dead-lettered at once. While MySQL is unreachable the
//! loop holds its batch and waits (readiness says so): an outage spends no message's attempts.
//! A lock conflict or a lost inbox race is retried at once a few times. Anything else splits the
//! batch into single-event transactions, so one bad event never fails the others; the culprit
//! goes to a retry queue with its attempt counted, and is dead-lettered with its history when
//! the attempts run out.
//!
//! Consuming partitions (the partitioned layout, `partitions.rs`), a batch mixes deliveries of
//! several partition channels and keeps per-entity order: a failing event does not go to a retry
//! queue, where its successors would overtake it, but waits in the deferral store holding its key
//! (`deferrals.rs`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use automation_shared::config::WorkerConfig;
use automation_shared::db::Failure;
use automation_shared::db::audit::AuditChain;
use automation_shared::db::events::OutboxMessage;
use automation_shared::events::{Envelope, WorkQueue};
use automation_shared::messaging::{Origin, SystemUsers};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::apply::{self, BatchError, Item, Message, Ordered, Outcome};
use crate::broker::Broker;
use crate::database::Database;
use crate::deferrals::SetAside;
use crate::failures::{self, DeathKind, Unapplied};
use crate::handlers::{self, EntityKey};
use crate::health::Health;
use crate::pack;
use crate::rules::RuleSet;
use crate::runner::TaskRunner;
use crate::spans;
use crate::tasks::{self, Registry};

/// Immediate re-runs of a batch that hit a lock wait timeout or an inbox race (a deadlock or a
/// certification failure is run again until it wins).
const CONFLICT_RETRIES: u32 = 3;

/// The longest pause between two runs of a batch that keeps losing deadlocks.
const CONFLICT_PAUSE_MAX_MS: u64 = 1_000;

/// Runs of a batch that keeps losing deadlocks or certification (about 45 s with the pauses),
/// after which it is split as any failing batch is and the loser spends an attempt: the consumer
/// is never held without end, nor past a shutdown.
const CONFLICT_RUNS_MAX: u32 = 50;

/// What applying events takes, shared by every consumer of events (a work queue's consumers, the
/// partition lanes, the deferral sweep): each makes its own [`Applier`] from a clone.
#[derive(Clone)]
pub struct ApplyContext {
    pub database: Database,
    pub broker: Broker,
    /// The automations a rule or a request may start.
    pub registry: Arc<Registry>,
    /// Counts the deliveries in flight, for the probes and the drain.
    pub health: Arc<Health>,
    /// Where the outbox rows a batch committed go, for the relay to publish at once.
    pub outbox: mpsc::Sender<Vec<OutboxMessage>>,
    pub settings: Arc<WorkerConfig>,
    /// Signs the audit chains.
    pub audit_key: Option<Arc<str>>,
    /// The most work one rule's evaluation may do.
    pub max_rule_steps: u64,
    /// Runs the tasks the tasks queue's execute messages ask for.
    pub runner: TaskRunner,
}

/// Consumes `queue` until `shutdown`, then drains: cancels the consumer, applies and settles
/// every delivery already received, and returns.
pub async fn run(context: ApplyContext, queue: WorkQueue, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = context.settings.clone();
    let broker = context.broker.clone();
    let (prefetch, batch_size) = match queue {
        WorkQueue::Commands => (settings.prefetch, settings.batch_size),
        // Each execute message runs a task; event batches stay small so tasks are not held up.
        WorkQueue::Tasks => (settings.task_concurrency, settings.batch_size.min(settings.task_concurrency as usize)),
    };
    let channel = broker.connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("automation-worker.{}.{}", queue.suffix(), uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            broker.names.work_queue(queue).into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %broker.names.work_queue(queue), prefetch, batch.size = batch_size, "consuming");
    let mut state = Applier::new(context, queue, false);
    let mut cancelled = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !cancelled => {
                cancelled = true;
                // No new deliveries; those already on their way still arrive and are settled.
                if let Err(error) = channel.basic_cancel(tag.clone().into(), BasicCancelOptions::default()).await {
                    tracing::warn!(%error, "could not cancel the consumer; unacked deliveries will be requeued");
                    break;
                }
                continue;
            }
            next = consumer.next() => next,
        };
        let first = match next {
            None => break,
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => {
                if cancelled {
                    break;
                }
                tracing::warn!(%error, queue = %broker.names.work_queue(queue), "the consumer channel failed; waiting for recovery");
                channel.wait_for_recovery(error).await?;
                tracing::info!(queue = %broker.names.work_queue(queue), "the consumer channel recovered");
                continue;
            }
        };
        let mut batch = vec![Incoming::whole(first, 0)];
        let mut pending_error = None;
        let deadline = Instant::now() + settings.batch_timeout();
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => batch.push(Incoming::whole(delivery, 0)),
                Ok(Some(Err(error))) => {
                    pending_error = Some(error);
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        state.process(batch, &shutdown).await;
        if let Some(error) = pending_error
            && !cancelled
        {
            channel.wait_for_recovery(error).await?;
        }
    }
    let _ = channel.close(200, "drained".into()).await;
    tracing::info!(queue = %broker.names.work_queue(queue), "consumer stopped");
    Ok(())
}

/// A delivery and the channel it came on: its partition in the partitioned layout, 0 otherwise.
/// Delivery tags, and so `multiple` acks, are per channel.
pub struct Incoming {
    /// Shared by the parts of a pack split across batches.
    pub delivery: Arc<Delivery>,
    pub channel: u16,
    /// Which of its events this batch takes.
    pub part: Part,
}

impl Incoming {
    /// A delivery taken whole.
    pub fn whole(delivery: Delivery, channel: u16) -> Incoming {
        Incoming { delivery: Arc::new(delivery), channel, part: Part::default() }
    }

    /// How many events this batch takes of it.
    pub fn events(&self) -> usize {
        let all = pack::events_in(&self.delivery.properties);
        self.part.take.unwrap_or(all.saturating_sub(self.part.skip))
    }

    /// Splits off what comes after the first `n` events this takes: a partition's consumer fills
    /// each batch to exactly its size, whatever the size of the packs (a pack is acked with its
    /// last part; a part that goes back to the broker takes the pack with it, and what of it was
    /// applied is skipped as a duplicate, as after a crash between commit and ack).
    pub fn split_off(&mut self, n: usize) -> Incoming {
        let rest = Incoming {
            delivery: self.delivery.clone(),
            channel: self.channel,
            part: Part { skip: self.part.skip + n, take: self.part.take.map(|t| t.saturating_sub(n)) },
        };
        self.part.take = Some(n);
        rest
    }
}

/// The events of a delivery a batch takes: after the first `skip`, `take` of them (`None`: all
/// the rest). A single event's delivery is always taken whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Part {
    pub skip: usize,
    pub take: Option<usize>,
}

impl Part {
    /// Does this part end its delivery (so the delivery is settled with it)?
    fn completes(&self) -> bool {
        self.take.is_none()
    }
}

/// One event of a batch, read into an envelope. A delivery carries one event, or a pack of
/// them (`pack.rs`).
struct Parsed {
    /// Index of its delivery in the batch.
    delivery: usize,
    /// The channel (partition) of that delivery.
    channel: u16,
    /// Whether that delivery was redelivered.
    redelivered: bool,
    routing_key: String,
    properties: lapin::BasicProperties,
    body: Vec<u8>,
    envelope: Envelope,
    attempt: u32,
    /// Its entity key, when order is kept.
    key: Option<EntityKey>,
    /// Its consumer span, open until its delivery is settled.
    span: tracing::Span,
}

/// One event of a delivery, before it is read.
struct Unread {
    routing_key: String,
    properties: lapin::BasicProperties,
    body: Vec<u8>,
}

/// The events a delivery carries: itself, or the events of its pack. `None`: a pack that
/// cannot be read.
fn events_of(delivery: &Delivery, system: &SystemUsers) -> Option<Vec<Unread>> {
    if pack::is_pack(&delivery.properties) {
        // Only the sequencer packs: a pack from anyone else could carry anything.
        if !Origin::of(&delivery.properties, system).is_system() {
            return None;
        }
        let events = pack::unpack(&delivery.data)?;
        return Some(
            events
                .into_iter()
                .map(|e| Unread {
                    routing_key: failures::original_routing_key(&e.properties, &e.routing_key, system),
                    properties: e.properties,
                    body: e.body,
                })
                .collect(),
        );
    }
    Some(vec![Unread {
        routing_key: failures::original_routing_key(&delivery.properties, delivery.routing_key.as_str(), system),
        properties: delivery.properties.clone(),
        body: delivery.data.clone(),
    }])
}

/// What became of one event of a batch, for its delivery.
enum Settled {
    /// Committed (applied, refused, a duplicate, or waiting in the deferral store): ack.
    Done(Outcome),
    /// Failed: a retry queue, or a dead letter once out of attempts.
    Failed(BatchError),
    /// Hand it back to the queue: it could not be applied nor set aside now, and whatever comes
    /// after it on its channel must not overtake it.
    Requeue,
}

/// Applies batches of deliveries and settles them: one per consumer of events, with its own audit
/// chain and rule state, made from a clone of the shared [`ApplyContext`].
pub struct Applier {
    context: ApplyContext,
    queue: WorkQueue,
    chain: AuditChain,
    rules: RuleSet,
    /// Keep per-entity order (consuming partitions).
    ordered: bool,
    /// Channels on which some delivery was left for the broker to hand to another worker
    /// (shutting down while the database is away): from then on a `multiple` ack there could
    /// settle it too.
    left_unsettled: HashSet<u16>,
    /// Channels whose deliveries must go back to the broker whole, in order: the caller closes
    /// them ([`Applier::take_handed_back`]).
    handed_back: BTreeSet<u16>,
    /// Partitions this consumer found no held key on, since it last made one: its batches do
    /// not look for holds there. Only a partition's active consumer holds its keys, so the set
    /// stays true until this consumer defers an event or gives the partition up.
    unheld: HashSet<u16>,
}

impl Applier {
    pub fn new(context: ApplyContext, queue: WorkQueue, ordered: bool) -> Applier {
        Applier {
            chain: AuditChain::new(context.audit_key.as_deref()),
            rules: RuleSet::new(context.max_rule_steps),
            context,
            queue,
            ordered,
            left_unsettled: HashSet::new(),
            unheld: HashSet::new(),
            handed_back: BTreeSet::new(),
        }
    }

    /// The channels to close since the last call: a delivery on each could not be settled, and
    /// closing hands all of the channel's deliveries back in order.
    pub fn take_handed_back(&mut self) -> BTreeSet<u16> {
        std::mem::take(&mut self.handed_back)
    }

    /// Forgets a channel that was closed (its deliveries went back to the queue).
    pub fn forget_channel(&mut self, channel: u16) {
        self.left_unsettled.remove(&channel);
        self.unheld.remove(&channel);
    }

    /// Before applying from partitions not known to be free of holds: look once. The consumer is
    /// the partition's active one by now (it has its deliveries), so what an earlier consumer
    /// held is committed.
    async fn learn_unheld(&mut self, channels: impl Iterator<Item = u16>) {
        let unknown: Vec<u16> =
            channels.filter(|c| !self.unheld.contains(c)).collect::<BTreeSet<_>>().into_iter().collect();
        if unknown.is_empty() {
            return;
        }
        let pool = &self.context.database.pool;
        if let Ok(held) = automation_shared::db::deferrals::held_partitions(pool, &unknown).await {
            self.unheld.extend(unknown.into_iter().filter(|p| !held.contains(p)));
        }
    }

    pub async fn process(&mut self, deliveries: Vec<Incoming>, shutdown: &CancellationToken) {
        let started = Instant::now();
        let held = deliveries.len();
        self.context.health.hold(held);
        let received_at = Utc::now();
        let limits = self.context.broker.limits();
        let queue_name = self.context.broker.names.work_queue(self.queue);
        let mut incoming = Vec::with_capacity(deliveries.len());
        let mut executes = Vec::new();
        for delivery in deliveries {
            if self.queue == WorkQueue::Tasks
                && delivery.delivery.properties.kind().as_ref().is_some_and(|k| k.as_str() == tasks::EXECUTE)
                // Start messages are the worker's own; anyone else's is read as an event (and
                // refused as one).
                && Origin::of(&delivery.delivery.properties, &self.context.broker.system_users).is_system()
            {
                executes.push(delivery.delivery);
            } else {
                incoming.push(delivery);
            }
        }
        // Per delivery: can it be acked once its events are through (nothing of it must come
        // back)?
        let mut settled = vec![true; incoming.len()];
        let mut parsed = Vec::new();
        for (index, delivery) in incoming.iter().enumerate() {
            let Some(events) = events_of(&delivery.delivery, &self.context.broker.system_users) else {
                // Buried whole with its first part.
                if delivery.part.skip == 0 {
                    let result = self.bury_unreadable_pack(&delivery.delivery).await;
                    settled[index] = result.is_ok();
                }
                continue;
            };
            let part = delivery.part;
            for event in events.into_iter().skip(part.skip).take(part.take.unwrap_or(usize::MAX)) {
                match Envelope::parse(&event.routing_key, &event.properties, &event.body, limits) {
                    Ok(mut envelope) => {
                        let span =
                            spans::event(&queue_name, &event.routing_key, &mut envelope, delivery.delivery.redelivered);
                        let attempt = failures::attempt_of(&event.properties);
                        let key = self.ordered.then(|| handlers::entity_key(&envelope));
                        parsed.push(Parsed {
                            delivery: index,
                            channel: delivery.channel,
                            redelivered: delivery.delivery.redelivered,
                            routing_key: event.routing_key,
                            properties: event.properties,
                            body: event.body,
                            envelope,
                            attempt,
                            key,
                            span,
                        });
                    }
                    Err(poison) => {
                        let span = spans::poison(
                            &queue_name,
                            &event.routing_key,
                            &event.properties,
                            poison.event_id.as_deref(),
                        );
                        let message = Unapplied {
                            queue: self.queue,
                            routing_key: &event.routing_key,
                            properties: &event.properties,
                            body: &event.body,
                            event_id: poison.event_id.as_deref(),
                            event_type: poison.event_type.as_deref(),
                        };
                        span.in_scope(
                            || tracing::warn!(reason = %poison, "dead-lettering a message that cannot be taken"),
                        );
                        let result = failures::dead_letter(
                            &self.context.broker,
                            &message,
                            DeathKind::Poison,
                            &poison.to_string(),
                            None,
                        )
                        .instrument(span.clone())
                        .await;
                        metrics::counter!(automation_shared::meters::WORKER_DEAD_LETTERED, "kind" => "poison", "reason" => poison.code.as_str())
                            .increment(1);
                        if let Err(error) = result {
                            span.in_scope(
                                || tracing::warn!(%error, "could not dead-letter a message; returning it to the queue"),
                            );
                            settled[index] = false;
                        }
                    }
                }
            }
        }
        let mut left = false;
        if self.ordered && !parsed.is_empty() {
            self.learn_unheld(parsed.iter().map(|p| p.channel)).await;
        }
        if !parsed.is_empty() {
            let batch = spans::batch(&queue_name, parsed.iter().map(|p| (&p.span, p.envelope.id.as_str())));
            match self.apply_and_route(&parsed, received_at, shutdown).instrument(batch).await {
                Some(outcomes) => {
                    for (p, ok) in parsed.iter().zip(outcomes) {
                        settled[p.delivery] &= ok;
                    }
                }
                // Shutting down while the database is away: leave the deliveries unacked; the
                // broker gives them to another worker when this channel closes.
                None => left = true,
            }
        }
        if left {
            self.left_unsettled.extend(incoming.iter().map(|d| d.channel));
        } else {
            // A delivery with an event that must come back is handed back whole (what of it was
            // applied is skipped as a duplicate); the others are acked. Execute messages of this
            // batch are settled after the events: until then a `multiple` ack of the events
            // could settle them before their tasks ran.
            let multiple = executes.is_empty() && settled.iter().all(|ok| *ok);
            // In order, a delivery must not come back behind the ones this consumer already
            // holds: the channel is handed back whole instead (the caller closes it, and the
            // broker returns its deliveries in order); nothing on it is acked.
            let handed_back: BTreeSet<u16> = if self.ordered {
                incoming.iter().zip(&settled).filter(|(_, ok)| !**ok).map(|(d, _)| d.channel).collect()
            } else {
                BTreeSet::new()
            };
            let mut acks = Vec::with_capacity(incoming.len());
            for (delivery, ok) in incoming.iter().zip(&settled) {
                if handed_back.contains(&delivery.channel) {
                    continue;
                }
                if *ok {
                    // A pack's earlier part: settled with its last.
                    if delivery.part.completes() {
                        acks.push(delivery);
                    }
                } else {
                    let _ = delivery
                        .delivery
                        .acker
                        .nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() })
                        .await;
                }
            }
            self.handed_back.extend(handed_back);
            ack_all(&acks, multiple, &self.left_unsettled).await;
        }
        if !executes.is_empty() {
            let left = crate::runner::execute_all(&self.context.runner, &mut self.chain, executes, shutdown).await;
            if left {
                self.left_unsettled.insert(0);
            }
        }
        self.context.health.release(held);
        metrics::histogram!(automation_shared::meters::WORKER_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(automation_shared::meters::WORKER_BATCH_SIZE).record(parsed.len() as f64);
    }

    /// A pack that cannot be read (it was not made by a sequencer of this version): kept whole in
    /// the dead-letter store.
    async fn bury_unreadable_pack(
        &self,
        delivery: &Delivery,
    ) -> Result<(), automation_shared::messaging::PublishError> {
        let message = Unapplied {
            queue: self.queue,
            routing_key: delivery.routing_key.as_str(),
            properties: &delivery.properties,
            body: &delivery.data,
            event_id: None,
            event_type: None,
        };
        tracing::error!("dead-lettering a pack of events that cannot be read");
        metrics::counter!(automation_shared::meters::WORKER_DEAD_LETTERED, "kind" => "poison", "reason" => "invalid_pack")
            .increment(1);
        failures::dead_letter(
            &self.context.broker,
            &message,
            DeathKind::Poison,
            "invalid_pack: a pack of events that cannot be read",
            None,
        )
        .await
        .map(|_| ())
    }

    /// Applies the events and routes the failures. Per event: whether its delivery may be acked
    /// as far as it is concerned. `None` when shutdown came while the database was away.
    async fn apply_and_route(
        &mut self,
        parsed: &[Parsed],
        received_at: chrono::DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Option<Vec<bool>> {
        let wait = chrono::Duration::milliseconds(self.context.settings.entity_wait_ms as i64);
        let items: Vec<Item<'_>> = parsed
            .iter()
            .map(|p| Item {
                envelope: &p.envelope,
                received_at,
                retried: p.attempt > 1,
                suspect: p.attempt > 1 || p.redelivered,
                order: p.key.as_ref().map(|key| Ordered {
                    key,
                    partition: p.channel,
                    maybe_held: !self.unheld.contains(&p.channel),
                    message: Message { routing_key: &p.routing_key, properties: &p.properties, body: &p.body },
                    deferred: None,
                    attempt: p.attempt,
                    wait_until: received_at + wait,
                    retry_at: None,
                }),
            })
            .collect();
        let results = self.apply_with_recovery(&items, shutdown).await?;
        let mut settled = Vec::with_capacity(parsed.len());
        for (p, result) in parsed.iter().zip(results) {
            if matches!(result, Settled::Done(Outcome::Deferred) | Settled::Failed(_) | Settled::Requeue) {
                self.unheld.remove(&p.channel);
            }
            let ok = match result {
                Settled::Done(outcome) => {
                    p.span.in_scope(|| tracing::debug!(outcome = outcome.as_str(), "event settled"));
                    metrics::counter!(automation_shared::meters::WORKER_EVENTS, "type" => p.envelope.event_type.as_str(), "outcome" => outcome.as_str())
                        .increment(1);
                    true
                }
                Settled::Failed(error) => self.route_failure(p, &error).instrument(p.span.clone()).await,
                Settled::Requeue => false,
            };
            settled.push(ok);
        }
        Some(settled)
    }

    /// Applies the batch, waiting out database outages. `None` when shutdown came first.
    async fn apply_with_recovery(&mut self, items: &[Item<'_>], shutdown: &CancellationToken) -> Option<Vec<Settled>> {
        let error = match self.apply_one_batch(items, shutdown).await? {
            Ok(outcomes) => return Some(outcomes.into_iter().map(Settled::Done).collect()),
            Err(error) => error,
        };
        if items.len() == 1 && !self.ordered {
            return Some(vec![Settled::Failed(error)]);
        }
        if items.len() > 1 {
            tracing::warn!(%error, batch.size = items.len(), "the batch failed; applying its events one at a time");
        }
        let mut results = Vec::with_capacity(items.len());
        let mut first_error = Some(error);
        // Once an event of this batch waits holding its key, the later ones must look for holds.
        let mut deferred = false;
        for (index, item) in items.iter().enumerate() {
            let mut item = *item;
            if deferred && let Some(ordered) = item.order.as_mut() {
                ordered.maybe_held = true;
            }
            let item = &item;
            let result = match (index, items.len(), first_error.take()) {
                // One event that failed alone: no need to run it again.
                (0, 1, Some(error)) => Err(error),
                _ => self.apply_one_batch(std::slice::from_ref(item), shutdown).await?.map(|mut o| o.remove(0)),
            };
            deferred |= matches!(result, Ok(Outcome::Deferred));
            let settled = match (result, item.order) {
                (Ok(outcome), _) => Settled::Done(outcome),
                (Err(error), None) => Settled::Failed(error),
                // In order: the event waits in the deferral store, holding its key, before the
                // next event of the batch is applied (which then queues behind it).
                (Err(error), Some(ordered)) => {
                    match crate::deferrals::defer_failed(&self.context, item, &ordered, &error, shutdown).await {
                        Some(Ok(SetAside::Deferred)) => {
                            deferred = true;
                            Settled::Done(Outcome::Deferred)
                        }
                        // Dead-lettered by `route_failure`; the events after it go on.
                        Some(Ok(SetAside::OutOfAttempts)) => Settled::Failed(error),
                        Some(Err(defer_error)) => {
                            tracing::warn!(error = %defer_error, event.id = %item.envelope.id, "could not set a failed event aside; returning it and the rest of its batch to the queue");
                            results.extend(std::iter::repeat_with(|| Settled::Requeue).take(items.len() - index));
                            return Some(results);
                        }
                        None => return None,
                    }
                }
            };
            results.push(settled);
        }
        Some(results)
    }

    /// One transaction, re-run through outages and conflicts.
    pub(crate) async fn apply_one_batch(
        &mut self,
        items: &[Item<'_>],
        shutdown: &CancellationToken,
    ) -> Option<Result<Vec<Outcome>, BatchError>> {
        let mut conflicts = 0;
        let mut check_all = false;
        loop {
            let started = Instant::now();
            let result = apply::apply(
                &self.context.database.pool,
                &self.context.registry,
                &mut self.chain,
                &mut self.rules,
                items,
                check_all,
            )
            .await;
            metrics::histogram!(automation_shared::meters::WORKER_APPLY_SECONDS)
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(committed) => {
                    // Published at once by the relay; if that fails the rows wait for its sweep.
                    if !committed.outbox.is_empty() && self.context.outbox.send(committed.outbox).await.is_err() {
                        tracing::debug!("the relay is gone; the outbox rows wait for a sweep");
                    }
                    return Some(Ok(committed.outcomes));
                }
                Err(error) if error.failure() == Failure::Unavailable => {
                    tracing::warn!(%error, "MySQL is unavailable; holding the batch until it answers");
                    if !self.context.database.wait_until_up(shutdown).await {
                        return None;
                    }
                }
                Err(error) if error.failure() == Failure::Duplicate && !check_all => {
                    // An event nobody suspected is in the inbox already: look every id up.
                    check_all = true;
                }
                // A deadlock or certification failure always has a winner: it is run again, with
                // a growing pause, until it wins (within CONFLICT_RUNS_MAX, and not past a
                // shutdown), and spends no attempt (two workers on one entity through two Galera
                // nodes lose to each other often). A lock wait
                // timeout or an inbox race is run again a few times, then spends an attempt.
                Err(error)
                    if matches!(error.failure(), Failure::Conflict | Failure::Duplicate)
                        && (conflicts < CONFLICT_RETRIES
                            || (error.always_resolves()
                                && conflicts < CONFLICT_RUNS_MAX
                                && !shutdown.is_cancelled())) =>
                {
                    conflicts += 1;
                    check_all = true;
                    if conflicts > CONFLICT_RETRIES && conflicts % 10 == CONFLICT_RETRIES % 10 {
                        tracing::warn!(%error, attempt = conflicts, batch.size = items.len(), "the batch keeps losing deadlocks or certification; running it again");
                    } else {
                        tracing::debug!(%error, attempt = conflicts, "lock conflict or inbox race; running the batch again");
                    }
                    let jitter = 5 + (uuid::Uuid::new_v4().as_u128() % 45) as u64;
                    let pause = (jitter * u64::from(conflicts)).min(CONFLICT_PAUSE_MAX_MS);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// A transient failure or a bug: retry later, or dead-letter when out of attempts.
    /// Whether the message was moved (else its delivery must come back).
    async fn route_failure(&self, p: &Parsed, error: &BatchError) -> bool {
        let message = Unapplied {
            queue: self.queue,
            routing_key: &p.routing_key,
            properties: &p.properties,
            body: &p.body,
            event_id: Some(&p.envelope.id),
            event_type: Some(p.envelope.event_type.as_str()),
        };
        let kind = error.kind();
        let text = error.to_string();
        let max = self.context.settings.max_attempts;
        let result = if p.attempt >= max {
            tracing::error!(event.id = %p.envelope.id, event.r#type = %p.envelope.event_type, attempts = p.attempt, error = %text, "giving up on an event");
            metrics::counter!(automation_shared::meters::WORKER_DEAD_LETTERED, "kind" => "exhausted", "reason" => kind)
                .increment(1);
            let reason = format!("gave up after {} attempts: {text}", p.attempt);
            failures::dead_letter(&self.context.broker, &message, DeathKind::Exhausted, &reason, Some((kind, &text)))
                .await
                .map(|_| ())
        } else {
            match failures::retry_later(
                &self.context.broker,
                &self.context.settings.retry_delays_ms,
                &message,
                kind,
                &text,
            )
            .await
            {
                Ok(delay) => {
                    tracing::warn!(event.id = %p.envelope.id, attempt = p.attempt, retry.in_ms = delay, error = %text, "event failed; it will be retried");
                    metrics::counter!(automation_shared::meters::WORKER_RETRIES, "kind" => kind).increment(1);
                    let next = Utc::now() + chrono::Duration::milliseconds(delay as i64);
                    let noted = automation_shared::db::events::record_attempt(
                        &self.context.database.pool,
                        p.envelope.event_ref(),
                        Some(p.envelope.event_type.as_str()),
                        p.attempt,
                        kind,
                        &text,
                        Some(next),
                    )
                    .await;
                    if let Err(error) = noted {
                        tracing::debug!(%error, "could not note the retry; the status will say pending");
                    }
                    Ok(())
                }
                Err(error) => Err(error),
            }
        };
        match result {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "could not move the message; returning it to the queue");
                false
            }
        }
    }
}

/// Acks deliveries after their effects committed. With `multiple` (the caller knows every
/// earlier delivery of these channels is settled: poison and retried messages one by one before,
/// nothing left over), one ack on the highest tag of each channel settles them all; otherwise
/// each is acked. A channel in `unsettled` still has a delivery left for the broker: its
/// deliveries are acked one by one. An ack that fails (the channel went away after the commit)
/// is harmless: the message comes back and the inbox recognises it.
async fn ack_all(deliveries: &[&Incoming], multiple: bool, unsettled: &HashSet<u16>) {
    let mut highest: BTreeMap<u16, &Delivery> = BTreeMap::new();
    let mut singles = Vec::new();
    for incoming in deliveries {
        if multiple && !unsettled.contains(&incoming.channel) {
            let entry = highest.entry(incoming.channel).or_insert(&incoming.delivery);
            if incoming.delivery.delivery_tag > entry.delivery_tag {
                *entry = &incoming.delivery;
            }
        } else {
            singles.push(&incoming.delivery);
        }
    }
    let mut lost = None;
    for last in highest.values() {
        if let Err(error) = last.acker.ack(BasicAckOptions { multiple: true }).await {
            lost = Some(error);
        }
    }
    for delivery in singles {
        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
            lost = Some(error);
        }
    }
    if let Some(error) = lost {
        tracing::info!(%error, "an ack was lost; the messages will be redelivered and skipped as duplicates");
    }
}
