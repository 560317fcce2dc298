//! The outbox relay: publishes what committed transactions wrote to the outbox, with confirms,
//! then deletes the rows. Woken after every commit, and sweeps on a timer for rows a crashed
//! worker left behind.
//!
//! No lock is held while publishing. A relay leases a set of rows in a short transaction,
//! publishes them, and deletes the rows still leased to it, retrying the delete through lock
//! conflicts. Any number of workers relay side by side; a row is published twice only when a
//! relay dies between the broker's confirm and the delete and its lease runs out, and then the
//! copy carries the same CloudEvent id.

use std::sync::Arc;
use std::time::Duration;

use automation_shared::db::events::{self as event_rows, Destination};
use automation_shared::db::{self, Failure};
use automation_shared::messaging::{self, Outgoing};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::service::Worker;

/// Rows leased and published at a time.
const LEASE_ROWS: u32 = 500;
/// Long enough to publish a full lease through a slow broker; short enough that a crashed relay's
/// rows go out soon.
const LEASE_SECS: u32 = 30;
/// Attempts to lease or delete through lock conflicts before the cycle gives up.
const CONFLICT_ATTEMPTS: u32 = 20;

pub async fn run(worker: Arc<Worker>, stop: CancellationToken) {
    let relay = Uuid::new_v4();
    let sweep = Duration::from_millis(worker.config.worker.outbox_sweep_ms);
    let mut failures = 0u32;
    loop {
        match drain(&worker, relay).await {
            Ok(_) => failures = 0,
            Err(error) => {
                failures += 1;
                // Quiet after the first: readiness reports an outage of either side already.
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        failures,
                        "the outbox could not be relayed; it stays until it can"
                    );
                }
            }
        }
        let wait = if failures == 0 {
            sweep
        } else {
            Duration::from_millis(200 * u64::from(failures.min(25)))
        };
        tokio::select! {
            _ = worker.outbox_wake.notified(), if failures == 0 => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => {
                if let Err(error) = drain(&worker, relay).await {
                    tracing::warn!(error = format!("{error:#}"), "the outbox could not be flushed before exit; another worker will publish it");
                }
                return;
            }
        }
    }
}

/// Publishes until the outbox holds nothing this relay may lease. Returns how many went out.
pub async fn drain(worker: &Worker, relay: Uuid) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let published = relay_once(worker, relay).await?;
        total += published;
        if published < LEASE_ROWS as usize {
            return Ok(total);
        }
    }
}

async fn relay_once(worker: &Worker, relay: Uuid) -> anyhow::Result<usize> {
    let rows =
        through_conflicts(|| event_rows::lease_outbox(&worker.pool, relay, LEASE_ROWS, LEASE_SECS))
            .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let notifications = worker.names.notifications();
    let events = worker.names.events();
    let tasks = worker
        .names
        .work_queue(automation_shared::events::WorkQueue::Tasks);
    let mut messages = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let (exchange, routing_key, mandatory) = match Destination::parse(&row.destination) {
            Some(Destination::Notifications) => {
                (notifications.as_str(), row.routing_key.as_str(), false)
            }
            Some(Destination::Events) => (events.as_str(), row.routing_key.as_str(), false),
            Some(Destination::Tasks) => ("", tasks.as_str(), true),
            None => {
                tracing::error!(outbox.id = row.id, destination = %row.destination, "an outbox row has an unknown destination; leaving it for a newer worker");
                continue;
            }
        };
        ids.push(row.id);
        messages.push(Outgoing {
            exchange,
            routing_key,
            body: &row.body,
            properties: messaging::cloud_event_properties(&row.message_id, &row.routing_key),
            mandatory,
        });
    }
    worker.publisher.publish_all(messages).await?;
    through_conflicts(|| event_rows::delete_leased(&worker.pool, relay, &ids)).await?;
    metrics::counter!("automation_worker_outbox_published_total").increment(ids.len() as u64);
    Ok(ids.len())
}

/// Runs a short statement again while it loses lock conflicts.
async fn through_conflicts<T, F, Fut>(mut operation: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(error)
                if db::classify(&error) == Failure::Conflict && attempt < CONFLICT_ATTEMPTS =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(2 + u64::from(attempt) * 3)).await;
            }
            result => return result,
        }
    }
}
