//! Executing automation runs: one attempt per `automation.execute` message on the tasks queue.
//!
//! An attempt is claimed in a transaction (the run moves to `running`), the task runs outside any
//! transaction within its time limit, and its outcome is written in a second transaction with the
//! run's notification, audit record and follow-up events. A run that failed and may try again is
//! set to `retrying` with a time; the scheduler queues the next attempt then, so a waiting run
//! holds no consumer. A worker killed mid-attempt leaves the run `running`; the message comes back
//! and the attempt runs again (a task's effects outside the database are at least once).

use std::sync::Arc;

use automation_shared::config::Config;
use automation_shared::db::audit::{ActorType, AuditChain, NewRecord};
use automation_shared::db::events::{self as event_rows, OutboxMessage};
use automation_shared::db::runs::{self, Run, RunState};
use automation_shared::db::{self, Failure};
use automation_shared::events::{NotificationType, WorkQueue, derived_id};
use automation_shared::traces::TraceHeaders;
use chrono::Utc;
use futures_util::future::join_all;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::{Value, json};
use sqlx::MySqlPool;
use sqlx::types::Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::announce::{self, Actor, Cause};
use crate::broker::Broker;
use crate::database::Database;
use crate::failures::{self, DeathKind, Unapplied};
use crate::spans;
use crate::tasks::{self, Execute, Registry, TaskContext, TaskError, TaskOutput};

/// What running tasks takes: the automations, what a task is handed (the pool, the HTTP client,
/// the configuration), and where an attempt's outcome goes. Cheap to clone.
#[derive(Clone)]
pub struct TaskRunner {
    pub database: Database,
    /// Dead-letters what is not an execute message.
    pub broker: Broker,
    pub registry: Arc<Registry>,
    /// For tasks that call out (`webhook.call`).
    pub http: reqwest::Client,
    /// What tasks read (`tasks.webhook_secret`, ...).
    pub config: Arc<Config>,
    /// Where the outcomes' notifications and follow-ups go, for the relay to publish at once.
    pub outbox: mpsc::Sender<Vec<OutboxMessage>>,
}

/// Runs the attempts these deliveries ask for, side by side, and settles each delivery. True
/// when some were left unsettled for the broker to hand to another worker (shutting down while
/// the database is away).
pub async fn execute_all(
    runner: &TaskRunner,
    chain: &mut AuditChain,
    deliveries: Vec<Arc<Delivery>>,
    shutdown: &CancellationToken,
) -> bool {
    let mut left = false;
    let spans: Vec<tracing::Span> = deliveries.iter().map(|d| spans::run_attempt(d)).collect();
    let outcomes =
        join_all(deliveries.iter().zip(&spans).map(|(d, span)| attempt(runner, d, shutdown).instrument(span.clone())))
            .await;
    for ((delivery, outcome), span) in deliveries.iter().zip(outcomes).zip(&spans) {
        let outcome = match outcome {
            Attempted::Done(Some(finished)) => {
                finish(runner, chain, &finished, shutdown).instrument(span.clone()).await
            }
            other => other,
        };
        match outcome {
            Attempted::Done(_) => {
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::info!(%error, "an ack was lost; the attempt's message will come back and be skipped");
                }
            }
            // Back to the queue: the quorum queue's delivery limit dead-letters a message that
            // keeps failing this way.
            Attempted::Requeue => {
                let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
            }
            Attempted::Leave => left = true,
        }
    }
    left
}

enum Attempted {
    /// Settle the delivery; record this outcome first (none: nothing ran).
    Done(Option<Box<Finished>>),
    /// Hand the delivery back: it could not be taken now (the database refused, or its dead
    /// letter was not confirmed).
    Requeue,
    /// Shutting down while the database is away: leave the delivery to another worker.
    Leave,
}

/// An attempt that ran.
struct Finished {
    run: Run,
    attempt: u32,
    outcome: Result<TaskOutput, TaskError>,
}

async fn attempt(runner: &TaskRunner, delivery: &Delivery, shutdown: &CancellationToken) -> Attempted {
    let Ok(request) = serde_json::from_slice::<Execute>(&delivery.data) else {
        let message = Unapplied {
            queue: WorkQueue::Tasks,
            routing_key: delivery.routing_key.as_str(),
            properties: &delivery.properties,
            body: &delivery.data,
            event_id: None,
            event_type: Some(tasks::EXECUTE),
        };
        let reason = "invalid_execute: not an execute message";
        return match failures::dead_letter(&runner.broker, &message, DeathKind::Poison, reason, None).await {
            Ok(_) => Attempted::Done(None),
            Err(error) => {
                tracing::warn!(%error, "could not dead-letter an invalid execute message; returning it to the queue");
                Attempted::Requeue
            }
        };
    };
    let database = &runner.database;
    let run = match database.through_outages(shutdown, || claim(&database.pool, &request, delivery.redelivered)).await {
        None => return Attempted::Leave,
        Some(Ok(run)) => run,
        Some(Err(error)) => {
            tracing::warn!(%error, run.id = %request.run_id, "could not claim a run; returning its message to the queue");
            return Attempted::Requeue;
        }
    };
    let Some(run) = run else { return Attempted::Done(None) };
    let span = tracing::Span::current();
    span.record("run.id", run.id.to_string().as_str());
    span.record("automation", run.automation.as_str());
    span.record("attempt", request.attempt);
    span.record("event.id", run.event_id.as_deref());
    let Some(spec) = runner.registry.get(&run.automation).cloned() else {
        let outcome =
            Err(TaskError::fatal(format!("no automation is registered as {:?} in this worker", run.automation)));
        return Attempted::Done(Some(Box::new(Finished { run, attempt: request.attempt, outcome })));
    };
    let context = TaskContext {
        run_id: run.id,
        attempt: request.attempt,
        params: run.params.as_ref().map(|p| p.0.clone()).unwrap_or(Value::Null),
        pool: runner.database.pool.clone(),
        http: runner.http.clone(),
        config: runner.config.clone(),
    };
    let started = std::time::Instant::now();
    tracing::info!(run.id = %run.id, automation = %run.automation, attempt = request.attempt, "running");
    let outcome = match tokio::time::timeout(spec.time_limit, (spec.run)(context)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(TaskError::retryable(format!("stopped after its time limit of {:?}", spec.time_limit))),
    };
    metrics::histogram!(automation_shared::meters::WORKER_TASK_SECONDS, "automation" => run.automation.clone())
        .record(started.elapsed().as_secs_f64());
    Attempted::Done(Some(Box::new(Finished { run, attempt: request.attempt, outcome })))
}

/// Moves the run to `running` for this attempt, or says there is nothing to run. A run already
/// `running` this attempt is taken over only from a redelivered message (its worker died); a
/// fresh copy of the start message (a republished outbox row) finds it taken.
async fn claim(pool: &MySqlPool, request: &Execute, redelivered: bool) -> sqlx::Result<Option<Run>> {
    let mut tx = pool.begin().await?;
    let Some(mut run) = runs::find_for_update(&mut *tx, request.run_id).await? else {
        return Ok(None);
    };
    let current = match run.state {
        RunState::Queued => request.attempt > run.attempts,
        // The worker running this attempt died: the message came back; run it again.
        RunState::Running => redelivered && request.attempt == run.attempts,
        _ => false,
    };
    if !current {
        tracing::debug!(run.id = %run.id, state = %run.state, attempt = request.attempt, "nothing to run for this message");
        return Ok(None);
    }
    let now = Utc::now();
    run.state = RunState::Running;
    run.attempts = request.attempt;
    run.started_at = Some(now);
    run.updated_at = now;
    runs::update(&mut *tx, &run).await?;
    tx.commit().await?;
    Ok(Some(run))
}

/// Records an attempt's outcome through outages and lock conflicts, so a lost write does not run
/// the task again; what cannot be written is handed back (the attempt then runs again). Written
/// out rather than through `Database::through_outages`: the write borrows the audit chain
/// mutably.
async fn finish(
    runner: &TaskRunner,
    chain: &mut AuditChain,
    finished: &Finished,
    shutdown: &CancellationToken,
) -> Attempted {
    let mut conflicts = 0;
    loop {
        let error = match record(&runner.database.pool, chain, finished).await {
            Ok(outbox) => {
                if !outbox.is_empty() {
                    let _ = runner.outbox.send(outbox).await;
                }
                return Attempted::Done(None);
            }
            Err(error) => error,
        };
        match db::classify(&error) {
            Failure::Unavailable if runner.database.wait_until_up(shutdown).await => {}
            Failure::Unavailable => return Attempted::Leave,
            Failure::Conflict if conflicts < db::CONFLICT_ATTEMPTS => {
                conflicts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(conflicts))).await;
            }
            _ => {
                tracing::warn!(%error, run.id = %finished.run.id, "a run's outcome could not be recorded; the attempt will run again");
                return Attempted::Requeue;
            }
        }
    }
}

/// Writes an attempt's outcome, its notification, audit record and follow-up events in one
/// transaction.
async fn record(pool: &MySqlPool, chain: &mut AuditChain, finished: &Finished) -> sqlx::Result<Vec<OutboxMessage>> {
    let mut tx = pool.begin().await?;
    let Some(mut run) = runs::find_for_update(&mut *tx, finished.run.id).await? else {
        return Ok(Vec::new());
    };
    if run.attempts != finished.attempt || run.state != RunState::Running {
        // Cancelled meanwhile (kept cancelled; the result is kept for the record), or superseded.
        if run.state == RunState::Cancelled {
            if let Ok(output) = &finished.outcome {
                run.result = Some(Json(output.result.clone()));
            }
            runs::update(&mut *tx, &run).await?;
            tx.commit().await?;
        }
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let cause_id = run.event_id.clone().unwrap_or_else(|| run.id.to_string());
    let trace = TraceHeaders::current();
    let cause = Cause {
        // A run's notifications take their ids from the run (`notification_with_id`).
        scoped_id: run.id.to_string(),
        id: cause_id,
        correlation_id: run.event_id.clone().unwrap_or_else(|| run.id.to_string()),
        // The attempt's span: its notifications and follow-ups continue from it.
        traceparent: trace.traceparent,
        tracestate: trace.tracestate,
        chain_depth: 0,
        // The request that waited for the event was answered by its first notification.
        reply_to: None,
    };
    let mut outbox = Vec::new();
    let kind = match &finished.outcome {
        Ok(output) => {
            run.state = RunState::Succeeded;
            run.result = Some(Json(output.result.clone()));
            run.error = None;
            run.finished_at = Some(now);
            let actor = Actor {
                id: format!("run:{}", run.id),
                actor_type: ActorType::System,
                source: "/automation-engine/tasks",
            };
            for (id, event_type, data) in &output.events {
                outbox.push(announce::follow_up(&cause, id, *event_type, data.clone(), &actor));
            }
            Some(NotificationType::AutomationSucceeded)
        }
        Err(error) if error.retryable && finished.attempt < run.max_attempts => {
            run.state = RunState::Retrying;
            run.error = Some(error.message.clone());
            run.run_at = Some(now + tasks::backoff(finished.attempt + 1));
            None
        }
        Err(error) => {
            run.state = RunState::Failed;
            run.error = Some(error.message.clone());
            run.finished_at = Some(now);
            Some(NotificationType::AutomationFailed)
        }
    };
    run.updated_at = now;
    runs::update(&mut *tx, &run).await?;
    let mut staged = chain.stage();
    if let Some(kind) = kind {
        let data = serde_json::to_value(&run).unwrap_or(Value::Null);
        outbox.push(announce::notification_with_id(
            derived_id(&format!("notification:{kind}"), &run.id.to_string()),
            &cause,
            kind,
            data,
        ));
        staged.push(NewRecord {
            entity: "automation_run".into(),
            entity_id: run.id.to_string(),
            action: kind.as_str().into(),
            actor_id: run.requested_by.clone(),
            actor_type: ActorType::System,
            event_id: run.event_id.clone(),
            correlation_id: None,
            details: Some(json!({"automation": run.automation, "attempts": run.attempts, "error": run.error})),
        });
    }
    staged.write(&mut tx).await?;
    event_rows::insert_outbox(&mut tx, &outbox).await?;
    match tx.commit().await {
        Ok(()) => chain.advance(&staged),
        Err(error) => {
            chain.abandon();
            return Err(error);
        }
    }
    tracing::info!(run.id = %run.id, automation = %run.automation, state = %run.state, attempt = finished.attempt, error = run.error, "attempt finished");
    Ok(outbox)
}
