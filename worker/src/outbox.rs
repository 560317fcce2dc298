//! The outbox relay: publishes what committed transactions wrote to the outbox, waits for the
//! broker's confirms, then deletes the rows. Woken after every commit, and sweeps on a timer for
//! rows a crashed worker left behind. Rows are claimed with `SKIP LOCKED`, so any number of
//! workers relay side by side without publishing a row twice.

use std::sync::Arc;
use std::time::Duration;

use automation_shared::db::events::{self as event_rows, Destination};
use automation_shared::messaging::{self, Outgoing};
use tokio_util::sync::CancellationToken;

use crate::service::Worker;

/// Rows published per transaction.
const CLAIM: u32 = 500;

pub async fn run(worker: Arc<Worker>, stop: CancellationToken) {
    let sweep = Duration::from_millis(worker.config.worker.outbox_sweep_ms);
    let mut failures = 0u32;
    loop {
        match drain(&worker).await {
            Ok(_) => failures = 0,
            Err(error) => {
                failures += 1;
                // Quiet at first: an outage of either side is reported by readiness already.
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(%error, failures, "the outbox could not be relayed; it stays until it can");
                }
            }
        }
        let wait = if failures == 0 { sweep } else { Duration::from_millis(200 * u64::from(failures.min(25))) };
        tokio::select! {
            _ = worker.outbox_wake.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {
                if let Err(error) = drain(&worker).await {
                    tracing::warn!(%error, "the outbox could not be flushed before exit; another worker will publish it");
                }
                return;
            }
        }
    }
}

/// Publishes until the outbox is empty. Returns how many messages went out.
pub async fn drain(worker: &Worker) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let published = relay_once(worker).await?;
        total += published;
        if published < CLAIM as usize {
            return Ok(total);
        }
    }
}

async fn relay_once(worker: &Worker) -> anyhow::Result<usize> {
    let mut tx = worker.pool.begin().await?;
    let rows = event_rows::claim_outbox(&mut tx, CLAIM).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let notifications = worker.names.notifications();
    let events = worker.names.events();
    let tasks = worker.names.work_queue(automation_shared::events::WorkQueue::Tasks);
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        let (exchange, routing_key, mandatory) = match Destination::parse(&row.destination) {
            Some(Destination::Notifications) => (notifications.as_str(), row.routing_key.as_str(), false),
            Some(Destination::Events) => (events.as_str(), row.routing_key.as_str(), false),
            Some(Destination::Tasks) => ("", tasks.as_str(), true),
            None => {
                tracing::error!(outbox.id = row.id, destination = %row.destination, "an outbox row has an unknown destination; skipping it");
                continue;
            }
        };
        messages.push(Outgoing {
            exchange,
            routing_key,
            body: &row.body,
            properties: messaging::cloud_event_properties(&row.message_id, &row.routing_key),
            mandatory,
        });
    }
    worker.publisher.publish_all(messages).await?;
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    event_rows::delete_outbox(&mut tx, &ids).await?;
    tx.commit().await?;
    metrics::counter!("automation_worker_outbox_published_total").increment(rows.len() as u64);
    Ok(rows.len())
}
