//! The sequencer of the partitioned layout: moves events from the `commands` queue, in queue
//! order, into the partition queue of their entity key. One instance runs it at a time (the
//! first live one, `membership.rs`), so the order in each partition is the order of `commands`.
//! That one-at-a-time is the broker's doing, not the membership table's: the sequencer first
//! declares an exclusive queue (`<prefix>.commands.sequencer`), which only one connection can
//! hold, and consumes and publishes on that same connection, which does not recover by itself.
//! When the connection goes, its lock, its consumer and its publishing go with it; a sequencer
//! that steps down closes its consumer before it lets the lock go. (Exclusive consumers would
//! not do: quorum queues accept a second one.) It publishes a chunk with confirms, then acks it:
//! a crash in between only makes copies, which the inbox skips. Events bound for one partition
//! travel in packs (`pack.rs`): one broker message per partition and chunk. A message it cannot read goes
//! to a partition by the hash of its id or body, and the partition's consumer dead-letters it
//! with the reason, as in any layout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automation_shared::events::envelope::Limits;
use automation_shared::events::{Envelope, WorkQueue};
use automation_shared::messaging::{Origin, Outgoing, SystemUsers};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::failures;
use crate::handlers::{self, partition_of};
use crate::membership::Assignment;
use crate::pack;

/// Deliveries moved per confirm round trip, at most: enough for a full pack per partition when
/// keys spread (the broker's cost is per message), and at least this many.
const CHUNK_PER_PARTITION: usize = pack::MAX_EVENTS;
const MIN_CHUNK: usize = 500;
/// Unacked deliveries of `commands` the sequencer may hold: two chunks, so the next one is
/// already here while one waits for its confirms.
const MAX_PREFETCH: usize = u16::MAX as usize;
/// How long a chunk waits for more deliveries.
const CHUNK_WAIT: Duration = Duration::from_millis(2);
/// Pause before trying again to become the consumer of `commands`.
const RETRY: Duration = Duration::from_secs(1);

/// Runs the sequencer into `partitions` partitions whenever this instance is assigned it, until
/// `stop`. It opens a connection of its own to `broker` (see above) for the lock, the consumer and
/// the publishing.
pub async fn run(
    broker: Broker,
    partitions: u16,
    mut assignment: watch::Receiver<Assignment>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        if stop.is_cancelled() {
            break;
        }
        if !assignment.borrow_and_update().sequencer {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = assignment.changed() => if changed.is_err() { break },
            }
            continue;
        }
        match sequence(&broker, partitions, &mut assignment, &stop).await {
            Ok(()) => {}
            Err(error) => {
                tracing::info!(error = format!("{error:#}"), "the sequencer is not running now; trying again shortly");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
    Ok(())
}

/// Takes the lock and consumes `commands` while assigned; returns when no longer assigned or
/// stopped, or with the error that ended it.
async fn sequence(
    broker: &Broker,
    partitions: u16,
    assignment: &mut watch::Receiver<Assignment>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = Arc::new(broker.connect_once("automation-worker sequencer").await?);
    let result = sequence_on(broker, partitions, &connection, assignment, stop).await;
    let _ = connection.close(200, "sequencer stopped".into()).await;
    result
}

async fn sequence_on(
    broker: &Broker,
    partitions: u16,
    connection: &Arc<lapin::Connection>,
    assignment: &mut watch::Receiver<Assignment>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let lock = connection.create_channel().await?;
    let lock_name = broker.names.sequencer_lock();
    lock.queue_declare(
        lock_name.clone().into(),
        QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
        FieldTable::default(),
    )
    .await
    .map_err(|error| anyhow::anyhow!("another instance holds {lock_name}: {error}"))?;
    let publisher = broker.publisher_on(connection.clone()).await?;
    let queue = broker.names.work_queue(WorkQueue::Commands);
    let chunk_size = (CHUNK_PER_PARTITION * usize::from(partitions)).clamp(MIN_CHUNK, MAX_PREFETCH / 2);
    let channel = connection.create_channel().await?;
    channel.basic_qos((chunk_size * 2) as u16, BasicQosOptions::default()).await?;
    let tag = format!("automation-worker.sequencer.{}", uuid::Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(queue.clone().into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    tracing::info!(%queue, partitions, chunk_size, "sequencing events into the partitions");
    let limits = broker.limits();
    let result = loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break Ok(()),
            changed = assignment.changed() => {
                if changed.is_err() || !assignment.borrow_and_update().sequencer {
                    break Ok(());
                }
                continue;
            }
            next = consumer.next() => match next {
                None => break Ok(()),
                Some(Err(error)) => break Err(anyhow::Error::from(error)),
                Some(Ok(delivery)) => delivery,
            },
        };
        let mut chunk = vec![first];
        let deadline = Instant::now() + CHUNK_WAIT;
        while chunk.len() < chunk_size {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => chunk.push(delivery),
                _ => break,
            }
        }
        // Per partition, in chunk order, in packs: the broker takes one message per pack.
        let mut by_partition: BTreeMap<u16, Vec<(String, &Delivery)>> = BTreeMap::new();
        for delivery in &chunk {
            let (partition, routing_key) = route(delivery, partitions, limits, &broker.system_users);
            by_partition.entry(partition).or_default().push((routing_key, delivery));
        }
        let queues: BTreeMap<u16, String> = by_partition.keys().map(|p| (*p, broker.names.partition(*p))).collect();
        let packs: Vec<(u16, lapin::BasicProperties, Vec<u8>)> = by_partition
            .iter()
            .flat_map(|(partition, events)| {
                events.chunks(pack::MAX_EVENTS).map(move |events| {
                    let (properties, body) =
                        pack::pack(events.iter().map(|(key, d)| (key.as_str(), &d.properties, d.data.as_slice())));
                    (*partition, properties, body)
                })
            })
            .collect();
        let messages = packs
            .iter()
            .map(|(partition, properties, body)| Outgoing {
                exchange: "",
                routing_key: &queues[partition],
                body,
                properties: pack_properties(properties, &broker.system_users),
                mandatory: true,
            })
            .collect();
        if let Err(error) = publisher.publish_all(messages).await {
            // Nothing is acked: closing the channel hands the chunk back, in order.
            break Err(anyhow::anyhow!("could not move events into the partitions: {error}"));
        }
        let Some(last) = chunk.last() else { continue };
        if let Err(error) = last.acker.ack(BasicAckOptions { multiple: true }).await {
            break Err(anyhow::anyhow!("could not ack moved events (they come again and are skipped): {error}"));
        }
        metrics::counter!(automation_shared::meters::WORKER_SEQUENCED).increment(chunk.len() as u64);
    };
    // The consumer goes first: the lock is let go only once nothing more is taken.
    let _ = channel.close(200, "sequencer stopped".into()).await;
    publisher.close().await;
    let _ = lock.close(200, "sequencer stopped".into()).await;
    result
}

/// A pack's properties as the sequencer publishes them: the system's (a partition's consumer
/// takes packs from nobody else), with its own headers kept. Stamping drops `x-` headers of
/// anything the system did not publish, so the pack is marked as the system's first; without
/// that its event count went, and lanes took a hundred packs for a batch of a hundred events.
fn pack_properties(properties: &lapin::BasicProperties, system: &SystemUsers) -> lapin::BasicProperties {
    let ours = properties.clone().with_user_id(system.own().into());
    Origin::System.stamp(ours, system)
}

/// The partition of a delivery, and the routing key it was first published with.
fn route(delivery: &Delivery, partitions: u16, limits: Limits<'_>, system: &SystemUsers) -> (u16, String) {
    let routing_key = failures::original_routing_key(&delivery.properties, delivery.routing_key.as_str(), system);
    let partition = match Envelope::parse(&routing_key, &delivery.properties, &delivery.data, limits) {
        Ok(envelope) => handlers::entity_key(&envelope).partition(partitions),
        Err(_) => match delivery.properties.message_id() {
            Some(id) => partition_of(id.as_str().as_bytes(), partitions),
            None => partition_of(&delivery.data, partitions),
        },
    };
    (partition, routing_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_pack_still_says_how_many_events_it_carries() {
        let system = SystemUsers::new("automation", &[]);
        let event = lapin::BasicProperties::default();
        let (properties, _) =
            pack::pack([("audit.recorded", &event, &b"{}"[..]), ("audit.recorded", &event, &b"{}"[..])]);
        let published = pack_properties(&properties, &system);
        assert!(pack::is_pack(&published));
        assert_eq!(pack::events_in(&published), 2);
        assert_eq!(published.user_id().as_ref().map(|u| u.as_str()), Some("automation"));
    }
}
