//! The outbox relay: publishes what committed transactions wrote to the outbox, with the broker's
//! confirms, then deletes the rows.
//!
//! Fresh rows come from this worker's consumers right after their commit, through a bounded
//! channel (a stalled broker holds the consumers back instead of piling up memory): the relay
//! publishes them at once and deletes them by message id. Rows a crashed worker left behind, or
//! whose publish failed, are swept once they are older than [`SWEEP_AFTER_SECS`]: a relay
//! leases them in a short transaction, publishes with no lock held, and deletes its own leased
//! rows. A row goes out twice only if a worker dies between the broker's confirm and the delete,
//! and then the copy carries the same CloudEvent id. A notification whose cause an API request
//! waits for also goes, as a copy, to that API process's reply queue ([`reply_copy`]).

use std::time::Duration;

use automation_shared::db::events::{self as event_rows, Destination, OutboxMessage};
use automation_shared::db::through_conflicts;
use automation_shared::messaging::{self, Outgoing};
use automation_shared::traces::TraceHeaders;
use sqlx::MySqlPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use uuid::Uuid;

use crate::broker::Broker;
use crate::spans;

/// Batches of fresh rows the channel holds before consumers wait.
pub const CHANNEL_BATCHES: usize = 64;
/// Rows published per broker round.
const ROUND_ROWS: usize = 500;
/// A row this old with no lease is a leftover: its writer did not publish it.
const SWEEP_AFTER_SECS: u32 = 10;
/// Long enough to publish a lease's rows through a slow broker; short enough that a crashed
/// relay's rows go out soon.
const LEASE_SECS: u32 = 30;

/// What the relay publishes with: the rows, the broker, and how often it sweeps.
#[derive(Clone)]
pub struct Relay {
    pub pool: MySqlPool,
    pub broker: Broker,
    pub sweep_every: Duration,
}

/// Publishes what the consumers hand over on `fresh` (the one receiver, taken at start-up) and
/// sweeps leftovers until `stop`; then publishes what is still handed over.
pub async fn run(relay: Relay, mut fresh: mpsc::Receiver<Vec<OutboxMessage>>, stop: CancellationToken) {
    let lessee = Uuid::new_v4();
    let mut sweep = tokio::time::interval(relay.sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            batch = fresh.recv() => match batch {
                Some(batch) => publish_fresh(&relay, gather(batch, &mut fresh)).await,
                None => return,
            },
            _ = sweep.tick() => {
                if let Err(error) = sweep_leftovers(&relay, lessee).await {
                    tracing::debug!(error = format!("{error:#}"), "the outbox sweep failed; it runs again shortly");
                }
            }
            _ = stop.cancelled() => {
                // The consumers are done: publish what they handed over.
                fresh.close();
                while let Some(batch) = fresh.recv().await {
                    publish_fresh(&relay, gather(batch, &mut fresh)).await;
                }
                return;
            }
        }
    }
}

/// Takes whatever else is already waiting, up to a round's worth.
fn gather(mut batch: Vec<OutboxMessage>, fresh: &mut mpsc::Receiver<Vec<OutboxMessage>>) -> Vec<OutboxMessage> {
    while batch.len() < ROUND_ROWS {
        match fresh.try_recv() {
            Ok(more) => batch.extend(more),
            Err(_) => break,
        }
    }
    batch
}

async fn publish_fresh(relay: &Relay, messages: Vec<OutboxMessage>) {
    let rows: Vec<(String, &OutboxMessage)> = messages.iter().map(|m| (m.message_id.to_string(), m)).collect();
    let causes: Vec<TraceHeaders> = messages.iter().map(|m| TraceHeaders::from_json(&m.body)).collect();
    let round = spans::outbox_round(&causes, false);
    let mut outgoing = Vec::with_capacity(rows.len());
    let mut message_spans = Vec::with_capacity(rows.len());
    for ((id, m), cause) in rows.iter().zip(&causes) {
        let (message, span) = traced(&relay.broker, cause, id, m.destination, &m.routing_key, &m.body);
        let copy = reply_copy(&relay.broker, &message, m.destination, m.reply_to.as_deref());
        outgoing.push(message);
        outgoing.extend(copy);
        message_spans.push(span);
    }
    let published = relay.broker.publisher.publish_all(outgoing).instrument(round.clone()).await;
    drop(message_spans);
    if let Err(error) = published {
        round.in_scope(|| tracing::warn!(%error, rows = messages.len(), "could not publish the outbox now; it is swept when the broker is back"));
        return;
    }
    let ids: Vec<Uuid> = messages.iter().map(|m| m.message_id).collect();
    if let Err(error) =
        through_conflicts(|| event_rows::delete_published(&relay.pool, &ids)).instrument(round.clone()).await
    {
        // Published but not deleted: the sweep publishes these again, with the same ids.
        round.in_scope(|| tracing::warn!(%error, rows = ids.len(), "published outbox rows could not be deleted"));
    }
    metrics::counter!(automation_shared::meters::WORKER_OUTBOX_PUBLISHED).increment(messages.len() as u64);
}

/// A message with the producer span it is published in; its AMQP headers carry that span.
fn traced<'a>(
    broker: &'a Broker,
    cause: &TraceHeaders,
    message_id: &str,
    destination: Destination,
    routing_key: &'a str,
    body: &'a [u8],
) -> (Outgoing<'a>, Span) {
    let mut message = outgoing(broker, message_id, destination, routing_key, body);
    let span = spans::outbox_message(cause, message.exchange, destination, routing_key, message_id);
    message.properties = TraceHeaders::of(&span).to_amqp(message.properties);
    (message, span)
}

/// The copy of a notification for the API request that waits for its cause (`Prefer: wait`):
/// straight into that API process's reply queue, through the default exchange, with the
/// message's properties. Only to a name of the API reply queue pattern of this prefix, so no
/// publisher can have the worker write into another queue. Not mandatory: a replica gone away
/// only means its request answers 202, as it does when the wait runs out.
fn reply_copy<'a>(
    broker: &Broker,
    message: &Outgoing<'a>,
    destination: Destination,
    reply_to: Option<&'a str>,
) -> Option<Outgoing<'a>> {
    let reply_to = reply_to.filter(|_| destination == Destination::Notifications)?;
    if !broker.names.is_api_reply_queue(reply_to) {
        tracing::debug!(reply_to = %reply_to, "not an API reply queue of this prefix; no copy sent");
        return None;
    }
    Some(Outgoing {
        exchange: "",
        routing_key: reply_to,
        body: message.body,
        properties: message.properties.clone(),
        mandatory: false,
    })
}

/// Publishes leftovers, leased as `lessee`, until none is left. Returns how many went out.
pub async fn sweep_leftovers(relay: &Relay, lessee: Uuid) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let rows = through_conflicts(|| {
            event_rows::lease_outbox(&relay.pool, lessee, ROUND_ROWS as u32, SWEEP_AFTER_SECS, LEASE_SECS)
        })
        .await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let causes: Vec<TraceHeaders> = rows.iter().map(|r| TraceHeaders::from_json(&r.body)).collect();
        let round = spans::outbox_round(&causes, true);
        let mut outgoing: Vec<Outgoing<'_>> = Vec::with_capacity(rows.len());
        let mut message_spans: Vec<Span> = Vec::with_capacity(rows.len());
        for (r, cause) in rows.iter().zip(&causes) {
            let Some(destination) = Destination::parse(&r.destination) else {
                tracing::error!(outbox.id = r.id, destination = %r.destination, "an outbox row has an unknown destination; leaving it for a newer worker");
                continue;
            };
            let (message, span) = traced(&relay.broker, cause, &r.message_id, destination, &r.routing_key, &r.body);
            let copy = reply_copy(&relay.broker, &message, destination, r.reply_to.as_deref());
            outgoing.push(message);
            outgoing.extend(copy);
            message_spans.push(span);
        }
        relay.broker.publisher.publish_all(outgoing).instrument(round).await?;
        drop(message_spans);
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        through_conflicts(|| event_rows::delete_leased(&relay.pool, lessee, &ids)).await?;
        metrics::counter!(automation_shared::meters::WORKER_OUTBOX_SWEPT).increment(ids.len() as u64);
        tracing::info!(rows = ids.len(), "published outbox rows left behind");
        total += ids.len();
    }
}

fn outgoing<'a>(
    broker: &'a Broker,
    message_id: &str,
    destination: Destination,
    routing_key: &'a str,
    body: &'a [u8],
) -> Outgoing<'a> {
    // The AMQP `type` is the row's own key (`approval.approved`, `automation.execute`), whatever
    // the message is routed by.
    // As the system: a follow-up's actor (a rule) and a start message count only from us.
    let properties =
        messaging::cloud_event_properties(message_id, routing_key).with_user_id(broker.system_users.own().into());
    match destination {
        Destination::Notifications => Outgoing {
            exchange: broker.exchanges.notifications.as_str(),
            routing_key,
            body,
            properties,
            mandatory: false,
        },
        Destination::Events => {
            Outgoing { exchange: broker.exchanges.events.as_str(), routing_key, body, properties, mandatory: false }
        }
        // Straight into the tasks queue through the default exchange; it must exist. The body is
        // an internal message, not a CloudEvent.
        Destination::Tasks => Outgoing {
            exchange: "",
            routing_key: broker.exchanges.tasks_queue.as_str(),
            body,
            properties: properties.with_content_type("application/json".into()),
            mandatory: true,
        },
    }
}
