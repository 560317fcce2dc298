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

use std::sync::Arc;
use std::time::Duration;

use automation_shared::db::Failure;
use automation_shared::db::audit::AuditChain;
use automation_shared::events::envelope::Limits;
use automation_shared::events::{Envelope, WorkQueue};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::apply::{self, BatchError, Item, Outcome};
use crate::failures::{self, DeathKind, Unapplied};
use crate::rules::RuleSet;
use crate::service::Worker;
use crate::tasks;

/// Immediate re-runs of a batch that hit a deadlock, a lock wait timeout or an inbox race.
const CONFLICT_RETRIES: u32 = 3;

/// Consumes `queue` until `shutdown`, then drains: cancels the consumer, applies and settles
/// every delivery already received, and returns.
pub async fn run(worker: Arc<Worker>, queue: WorkQueue, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = &worker.config.worker;
    let (prefetch, batch_size) = match queue {
        WorkQueue::Commands => (settings.prefetch, settings.batch_size),
        // Each execute message runs a task; event batches stay small so tasks are not held up.
        WorkQueue::Tasks => (settings.task_concurrency, settings.batch_size.min(settings.task_concurrency as usize)),
    };
    let channel = worker.connection.create_channel().await?;
    channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("automation-worker.{}.{}", queue.suffix(), uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            worker.names.work_queue(queue).into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = %worker.names.work_queue(queue), prefetch, batch.size = batch_size, "consuming");
    let mut state = QueueConsumer {
        chain: AuditChain::new(worker.config.audit.key.as_deref()),
        worker: worker.clone(),
        queue,
        rules: RuleSet::default(),
        left_unsettled: false,
    };
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
                tracing::warn!(%error, queue = %worker.names.work_queue(queue), "the consumer channel failed; waiting for recovery");
                channel.wait_for_recovery(error).await?;
                tracing::info!(queue = %worker.names.work_queue(queue), "the consumer channel recovered");
                continue;
            }
        };
        let mut batch = vec![first];
        let mut pending_error = None;
        let deadline = Instant::now() + settings.batch_timeout();
        while batch.len() < batch_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => batch.push(delivery),
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
    tracing::info!(queue = %worker.names.work_queue(queue), "consumer stopped");
    Ok(())
}

/// A delivery read into an envelope.
struct Parsed {
    delivery: Delivery,
    envelope: Envelope,
    routing_key: String,
    attempt: u32,
}

struct QueueConsumer {
    worker: Arc<Worker>,
    queue: WorkQueue,
    chain: AuditChain,
    rules: RuleSet,
    /// Some delivery of this channel was left for the broker to hand to another worker (shutting
    /// down while the database is away): from then on a `multiple` ack could settle it too.
    left_unsettled: bool,
}

impl QueueConsumer {
    async fn process(&mut self, deliveries: Vec<Delivery>, shutdown: &CancellationToken) {
        let started = Instant::now();
        let held = deliveries.len();
        self.worker.health.hold(held);
        let received_at = Utc::now();
        let limits = Limits {
            max_bytes: self.worker.config.worker.max_message_bytes,
            publishers: &self.worker.config.worker.publishers,
        };
        let mut parsed = Vec::with_capacity(deliveries.len());
        let mut executes = Vec::new();
        for delivery in deliveries {
            if self.queue == WorkQueue::Tasks
                && delivery.properties.kind().as_ref().is_some_and(|k| k.as_str() == tasks::EXECUTE)
            {
                executes.push(delivery);
                continue;
            }
            let routing_key = failures::original_routing_key(&delivery.properties, delivery.routing_key.as_str());
            match Envelope::parse(&routing_key, &delivery.properties, &delivery.data, limits) {
                Ok(envelope) => {
                    let attempt = failures::attempt_of(&delivery.properties);
                    parsed.push(Parsed { delivery, envelope, routing_key, attempt });
                }
                Err(poison) => {
                    let message = Unapplied {
                        queue: self.queue,
                        routing_key: &routing_key,
                        properties: &delivery.properties,
                        body: &delivery.data,
                        event_id: poison.event_id.as_deref(),
                        event_type: poison.event_type.as_deref(),
                    };
                    tracing::warn!(event.id = poison.event_id, reason = %poison, "dead-lettering a message that cannot be taken");
                    let result =
                        failures::dead_letter(&self.worker, &message, DeathKind::Poison, &poison.to_string(), None)
                            .await;
                    metrics::counter!("automation_worker_dead_lettered_total", "kind" => "poison", "reason" => poison.code.as_str())
                        .increment(1);
                    settle_after_publish(&delivery, result.map(|_| ())).await;
                }
            }
        }
        if !parsed.is_empty() {
            // Execute messages of this batch are settled after the events: until then a
            // `multiple` ack of the events could settle them before their tasks ran.
            let multiple = executes.is_empty() && !self.left_unsettled;
            self.apply_and_settle(parsed, received_at, multiple, shutdown).await;
        }
        if !executes.is_empty() {
            let left = crate::runner::execute_all(&self.worker, &mut self.chain, executes, shutdown).await;
            self.left_unsettled |= left;
        }
        self.worker.health.release(held);
        metrics::histogram!("automation_worker_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("automation_worker_batch_size").record(held as f64);
    }

    /// `multiple`: every earlier delivery of this channel is settled once these are, so one
    /// `multiple` ack may settle them all.
    async fn apply_and_settle(
        &mut self,
        parsed: Vec<Parsed>,
        received_at: chrono::DateTime<Utc>,
        multiple: bool,
        shutdown: &CancellationToken,
    ) {
        let items: Vec<Item<'_>> = parsed
            .iter()
            .map(|p| Item {
                envelope: &p.envelope,
                received_at,
                retried: p.attempt > 1,
                suspect: p.attempt > 1 || p.delivery.redelivered,
            })
            .collect();
        let Some(results) = self.apply_with_recovery(&items, shutdown).await else {
            // Shutting down while the database is away: leave the deliveries unacked; the broker
            // gives them to another worker when this channel closes.
            self.left_unsettled = true;
            return;
        };
        let mut acks = Vec::with_capacity(parsed.len());
        for (p, result) in parsed.iter().zip(results) {
            match result {
                Ok(outcome) => {
                    metrics::counter!("automation_worker_events_total", "type" => p.envelope.event_type.as_str(), "outcome" => outcome.as_str())
                        .increment(1);
                    acks.push(&p.delivery);
                }
                Err(error) => self.route_failure(p, &error).await,
            }
        }
        ack_all(&acks, multiple).await;
    }

    /// Applies the batch, waiting out database outages. `None` when shutdown came first.
    async fn apply_with_recovery(
        &mut self,
        items: &[Item<'_>],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Result<Outcome, BatchError>>> {
        let error = match self.apply_one_batch(items, shutdown).await? {
            Ok(outcomes) => return Some(outcomes.into_iter().map(Ok).collect()),
            Err(error) => error,
        };
        if items.len() == 1 {
            return Some(vec![Err(error)]);
        }
        tracing::warn!(%error, batch.size = items.len(), "the batch failed; applying its events one at a time");
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            let result = self.apply_one_batch(std::slice::from_ref(item), shutdown).await?;
            results.push(result.map(|mut outcomes| outcomes.remove(0)));
        }
        Some(results)
    }

    /// One transaction, re-run through outages and conflicts.
    async fn apply_one_batch(
        &mut self,
        items: &[Item<'_>],
        shutdown: &CancellationToken,
    ) -> Option<Result<Vec<Outcome>, BatchError>> {
        let mut conflicts = 0;
        let mut check_all = false;
        loop {
            let started = Instant::now();
            let result = apply::apply(
                &self.worker.pool,
                &self.worker.registry,
                &mut self.chain,
                &mut self.rules,
                items,
                check_all,
            )
            .await;
            metrics::histogram!("automation_worker_apply_seconds").record(started.elapsed().as_secs_f64());
            match result {
                Ok(committed) => {
                    // Published at once by the relay; if that fails the rows wait for its sweep.
                    if !committed.outbox.is_empty() && self.worker.outbox.send(committed.outbox).await.is_err() {
                        tracing::debug!("the relay is gone; the outbox rows wait for a sweep");
                    }
                    return Some(Ok(committed.outcomes));
                }
                Err(error) if error.failure() == Failure::Unavailable => {
                    tracing::warn!(%error, "MySQL is unavailable; holding the batch until it answers");
                    if !self.worker.wait_for_database(shutdown).await {
                        return None;
                    }
                }
                Err(error) if error.failure() == Failure::Duplicate && !check_all => {
                    // An event nobody suspected is in the inbox already: look every id up.
                    check_all = true;
                }
                Err(error)
                    if matches!(error.failure(), Failure::Conflict | Failure::Duplicate)
                        && conflicts < CONFLICT_RETRIES =>
                {
                    conflicts += 1;
                    check_all = true;
                    tracing::debug!(%error, attempt = conflicts, "lock conflict or inbox race; running the batch again");
                    let jitter = 5 + (uuid::Uuid::new_v4().as_u128() % 45) as u64;
                    tokio::time::sleep(Duration::from_millis(jitter * u64::from(conflicts))).await;
                }
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// A transient failure or a bug: retry later, or dead-letter when out of attempts.
    async fn route_failure(&self, p: &Parsed, error: &BatchError) {
        let message = Unapplied {
            queue: self.queue,
            routing_key: &p.routing_key,
            properties: &p.delivery.properties,
            body: &p.delivery.data,
            event_id: Some(&p.envelope.id),
            event_type: Some(p.envelope.event_type.as_str()),
        };
        let kind = error.kind();
        let text = error.to_string();
        let max = self.worker.config.worker.max_attempts;
        let result = if p.attempt >= max {
            tracing::error!(event.id = %p.envelope.id, event.r#type = %p.envelope.event_type, attempts = p.attempt, error = %text, "giving up on an event");
            metrics::counter!("automation_worker_dead_lettered_total", "kind" => "exhausted", "reason" => kind)
                .increment(1);
            let reason = format!("gave up after {} attempts: {text}", p.attempt);
            failures::dead_letter(&self.worker, &message, DeathKind::Exhausted, &reason, Some((kind, &text)))
                .await
                .map(|_| ())
        } else {
            match failures::retry_later(&self.worker, &message, kind, &text).await {
                Ok(delay) => {
                    tracing::warn!(event.id = %p.envelope.id, attempt = p.attempt, retry.in_ms = delay, error = %text, "event failed; it will be retried");
                    metrics::counter!("automation_worker_retries_total", "kind" => kind).increment(1);
                    let next = Utc::now() + chrono::Duration::milliseconds(delay as i64);
                    let noted = automation_shared::db::events::record_attempt(
                        &self.worker.pool,
                        &p.envelope.id,
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
        settle_after_publish(&p.delivery, result).await;
    }
}

/// Acks a delivery whose copy the broker confirmed; otherwise hands it back to the queue.
async fn settle_after_publish(delivery: &Delivery, published: Result<(), automation_shared::messaging::PublishError>) {
    match published {
        Ok(()) => ack_all(&[delivery], false).await,
        Err(error) => {
            tracing::warn!(%error, "could not move the message; returning it to the queue");
            let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
        }
    }
}

/// Acks deliveries after their effects committed. With `multiple` (the caller knows every
/// earlier delivery of this channel is settled: poison and retried messages one by one before,
/// nothing left over), one ack on the highest tag settles them all; otherwise each is acked. An
/// ack that fails (the channel went away after the commit) is harmless: the message comes back
/// and the inbox recognises it.
async fn ack_all(deliveries: &[&Delivery], multiple: bool) {
    let lost = if multiple && deliveries.len() > 1 {
        let Some(last) = deliveries.iter().max_by_key(|d| d.delivery_tag) else { return };
        last.acker.ack(BasicAckOptions { multiple: true }).await.err()
    } else {
        let mut lost = None;
        for delivery in deliveries {
            if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                lost = Some(error);
            }
        }
        lost
    };
    if let Some(error) = lost {
        tracing::info!(%error, "an ack was lost; the messages will be redelivered and skipped as duplicates");
    }
}
