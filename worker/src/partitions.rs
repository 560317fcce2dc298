//! The consumer lanes of the partitioned layout. Each lane consumes its share of this instance's
//! partitions (`membership.rs`), one channel per partition, and applies what arrives in batches
//! that mix partitions, through the same `Applier` as every consumer. Each partition queue is
//! single-active-consumer, and a lane gives a partition up only between batches, by closing its
//! channel: the broker then hands the unacked deliveries, in order, to the next consumer before
//! anything newer. So at any moment one consumer applies a partition's events, in queue order.
//! A batch holds exactly the configured number of events when that many are there: a pack that
//! does not fit is split, and its rest opens the next batch (a batch of a steady size keeps the
//! database's statements few and prepared once).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use automation_shared::events::WorkQueue;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::consumer::{Applier, ApplyContext, Incoming};
use crate::membership::Assignment;

/// Deliveries a partition's consumer holds: packs of up to a hundred events each, so a few
/// batches' worth.
const PARTITION_PREFETCH: u16 = 20;
/// Pause before a partition whose channel failed is opened again.
const REOPEN_AFTER: Duration = Duration::from_millis(500);

/// A partition this lane consumes.
struct Open {
    channel: Channel,
    /// Tells its deliveries from those of an earlier channel of the same partition.
    generation: u64,
    forwarder: JoinHandle<()>,
}

/// What a partition's forwarder hands the lane: a delivery, an error, or (`None`) the end of
/// the consumer (the broker cancelled it).
type Forwarded = (u16, u64, Option<Result<Delivery, lapin::Error>>);

/// Runs lane `lane` of `lanes` until `shutdown`; then closes its partitions (what was received
/// and not applied goes back to the queue, for the next consumer) and returns.
pub async fn run(
    context: ApplyContext,
    lane: u16,
    lanes: u16,
    mut assignment: watch::Receiver<Assignment>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = context.settings.clone();
    let broker = context.broker.clone();
    let (sender, mut received) = mpsc::channel::<Forwarded>(usize::from(settings.prefetch).max(64));
    let mut open: BTreeMap<u16, Open> = BTreeMap::new();
    let mut generation = 0u64;
    let mut applier = Applier::new(context, WorkQueue::Commands, true);
    let mut failed: BTreeSet<u16> = BTreeSet::new();
    // The rest of a pack split at the end of a batch: partition, channel generation, part.
    let mut carry: Option<(u16, u64, Incoming)> = None;
    loop {
        let wanted = assignment.borrow_and_update().lane(lane, lanes);
        for partition in open.keys().copied().filter(|p| !wanted.contains(p)).collect::<Vec<_>>() {
            close(&mut open, &mut applier, partition, "given to another worker").await;
        }
        let missing: Vec<u16> = wanted.iter().copied().filter(|p| !open.contains_key(p)).collect();
        for partition in missing {
            generation += 1;
            match subscribe(&broker, partition, generation, sender.clone()).await {
                Ok(partition_open) => {
                    failed.remove(&partition);
                    open.insert(partition, partition_open);
                }
                Err(error) => {
                    tracing::warn!(%error, partition, "could not consume a partition; trying again shortly");
                    failed.insert(partition);
                }
            }
        }
        // What did not fit into the last batch of a pack comes first in this one, if its
        // partition is still this lane's (else the pack went back to the broker with its channel).
        if let Some((partition, generation, _)) = &carry
            && open.get(partition).is_none_or(|o| o.generation != *generation)
        {
            carry = None;
        }
        let mut batch = Vec::new();
        if carry.is_some() {
            // Under load a batch may end on a split pack every time: look here too.
            if shutdown.is_cancelled() {
                break;
            }
            if assignment.has_changed().unwrap_or(true) {
                continue;
            }
        }
        if let Some((_, generation, incoming)) = carry.take() {
            carry = fill(&mut batch, incoming, generation, settings.batch_size);
        } else {
            let retry = if failed.is_empty() { Duration::from_secs(3600) } else { REOPEN_AFTER };
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = assignment.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
                _ = tokio::time::sleep(retry) => continue,
                next = received.recv() => match next {
                    Some(forwarded) => forwarded,
                    None => break,
                },
            };
            if let Some((incoming, generation)) = take(&mut open, &mut applier, &mut failed, &mut batch, first).await {
                carry = fill(&mut batch, incoming, generation, settings.batch_size);
            }
        }
        let deadline = Instant::now() + settings.batch_timeout();
        // Up to N events, not deliveries: a delivery is a pack of events.
        while carry.is_none() && batch.iter().map(Incoming::events).sum::<usize>() < settings.batch_size {
            match tokio::time::timeout_at(deadline, received.recv()).await {
                Ok(Some(forwarded)) => {
                    if let Some((incoming, generation)) =
                        take(&mut open, &mut applier, &mut failed, &mut batch, forwarded).await
                    {
                        carry = fill(&mut batch, incoming, generation, settings.batch_size);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            applier.process(batch, &shutdown).await;
            for partition in applier.take_handed_back() {
                tracing::warn!(
                    partition,
                    "handing a partition's deliveries back to the broker, in order; consuming it again"
                );
                close(&mut open, &mut applier, partition, "handed back").await;
            }
        }
    }
    for partition in open.keys().copied().collect::<Vec<_>>() {
        close(&mut open, &mut applier, partition, "drained").await;
    }
    tracing::info!(lane, "consumer lane stopped");
    Ok(())
}

/// A forwarded delivery for the batch, with its channel's generation, unless it belongs to a
/// channel closed since. A failed channel is closed, and what the batch has of it dropped.
async fn take(
    open: &mut BTreeMap<u16, Open>,
    applier: &mut Applier,
    failed: &mut BTreeSet<u16>,
    batch: &mut Vec<Incoming>,
    (partition, generation, delivery): Forwarded,
) -> Option<(Incoming, u64)> {
    if open.get(&partition).is_none_or(|o| o.generation != generation) {
        // Its channel is closed: the broker has it back.
        return None;
    }
    match delivery {
        Some(Ok(delivery)) => Some((Incoming::whole(delivery, partition), generation)),
        other => {
            let error = other
                .and_then(Result::err)
                .map_or_else(|| "the broker cancelled the consumer".to_string(), |e| e.to_string());
            tracing::warn!(%error, partition, "a partition's channel failed; opening it again");
            close(open, applier, partition, "failed").await;
            // What it delivered goes back to the broker with the channel: not applied here.
            batch.retain(|incoming| incoming.channel != partition);
            failed.insert(partition);
            None
        }
    }
}

/// Adds `incoming` to the batch, as much of it as fits into `batch_size` events; returns the rest
/// of a pack that did not fit, for the next batch.
fn fill(
    batch: &mut Vec<Incoming>,
    mut incoming: Incoming,
    generation: u64,
    batch_size: usize,
) -> Option<(u16, u64, Incoming)> {
    let room = batch_size.saturating_sub(batch.iter().map(Incoming::events).sum::<usize>()).max(1);
    let rest = (incoming.events() > room).then(|| (incoming.channel, generation, incoming.split_off(room)));
    batch.push(incoming);
    rest
}

async fn subscribe(
    broker: &Broker,
    partition: u16,
    generation: u64,
    sender: mpsc::Sender<Forwarded>,
) -> anyhow::Result<Open> {
    let queue = broker.names.partition(partition);
    let channel = broker.connection.create_channel().await?;
    channel.basic_qos(PARTITION_PREFETCH, BasicQosOptions::default()).await?;
    let tag = format!("automation-worker.{queue}.{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(queue.clone().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    tracing::debug!(%queue, "consuming a partition (active once the broker makes this consumer its single active one)");
    let forwarder = tokio::spawn(async move {
        while let Some(next) = consumer.next().await {
            let failed = next.is_err();
            if sender.send((partition, generation, Some(next))).await.is_err() || failed {
                return;
            }
        }
        // The consumer ended without an error: the lane opens the partition again.
        let _ = sender.send((partition, generation, None)).await;
    });
    Ok(Open { channel, generation, forwarder })
}

/// Gives a partition up: closing the channel returns its unacked deliveries to the queue.
async fn close(open: &mut BTreeMap<u16, Open>, applier: &mut Applier, partition: u16, why: &str) {
    let Some(partition_open) = open.remove(&partition) else { return };
    let _ = partition_open.channel.close(200, why.into()).await;
    partition_open.forwarder.abort();
    applier.forget_channel(partition);
    tracing::debug!(partition, why, "partition closed");
}
