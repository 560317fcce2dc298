//! Time-driven work, run by every worker: runs whose start time has come (a countdown, `runAt`, or
//! a retry's delay) are queued, and periodic schedules fire.
//!
//! Nothing here depends on which worker runs it. A due run is queued under a row lock
//! (`SKIP LOCKED`), so each is queued once. A schedule's tick fires by inserting
//! `(schedule, tick)` into `schedule_ticks` in the same transaction as its run: the primary key
//! lets exactly one worker fire each tick, and if that worker dies any other fires the next.
//! Ticks missed while no worker ran are not made up; the latest due tick fires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use automation_shared::config::ScheduleConfig;
use automation_shared::db::events::{self as event_rows, OutboxMessage};
use automation_shared::db::runs::{self, Run, RunState};
use automation_shared::db::{self, Failure};
use automation_shared::events::derived_id;
use automation_shared::traces::TraceHeaders;
use chrono::{DateTime, SubsecRound, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::Value;
use sqlx::MySqlPool;
use sqlx::types::Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tasks::{self, Registry};

/// How often the scheduler looks.
const TICK: Duration = Duration::from_millis(500);
/// How often schedules are re-read from the database.
const RELOAD: Duration = Duration::from_secs(30);
/// Due runs queued per transaction.
const PROMOTE_LIMIT: u32 = 200;

/// What the scheduler works with.
pub struct Scheduler {
    pub pool: MySqlPool,
    /// The automations a schedule may name.
    pub registry: Arc<Registry>,
    /// The schedules from configuration (the `schedules` table adds to them).
    pub configured: Vec<ScheduleConfig>,
    /// Where the start messages it committed go, for the relay to publish at once.
    pub outbox: mpsc::Sender<Vec<OutboxMessage>>,
}

pub async fn run(scheduler: Scheduler, stop: CancellationToken) {
    let mut schedules = Schedules::default();
    let mut last_reload: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if last_reload.is_none_or(|at| at.elapsed() >= RELOAD) {
            match load(&scheduler).await {
                Ok(list) => {
                    schedules.replace(list, Utc::now());
                    last_reload = Some(tokio::time::Instant::now());
                }
                Err(error) => tracing::debug!(%error, "could not read the schedules; keeping the last ones"),
            }
        }
        if let Err(error) = promote_due(&scheduler).await
            && db::classify(&error) != Failure::Unavailable
        {
            tracing::warn!(%error, "could not queue the runs that are due");
        }
        schedules.fire_due(&scheduler).await;
    }
}

/// Queues runs whose start time has come. Returns how many.
pub async fn promote_due(scheduler: &Scheduler) -> sqlx::Result<usize> {
    let mut tx = scheduler.pool.begin().await?;
    let due: Vec<Run> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{} where state in ('scheduled', 'retrying') and run_at <= now(6) order by run_at limit {PROMOTE_LIMIT} for update skip locked",
        runs::SELECT
    )))
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let mut outbox = Vec::with_capacity(due.len());
    for mut run in due.iter().cloned() {
        // The attempt continues the trace of the event that asked for the run.
        let trace = TraceHeaders { traceparent: run.traceparent.clone(), tracestate: run.tracestate.clone() };
        outbox.push(tasks::start_message_in(run.id, run.attempts + 1, trace));
        run.state = RunState::Queued;
        run.updated_at = now;
        runs::update(&mut *tx, &run).await?;
    }
    event_rows::insert_outbox(&mut tx, &outbox).await?;
    tx.commit().await?;
    let _ = scheduler.outbox.send(outbox).await;
    Ok(due.len())
}

/// A row of the `schedules` table.
#[derive(sqlx::FromRow)]
struct ScheduleRow {
    name: String,
    cron: String,
    automation: String,
    params: Option<Json<Value>>,
    enabled: bool,
}

/// Schedules from configuration, then from the `schedules` table (which wins on a name).
async fn load(scheduler: &Scheduler) -> sqlx::Result<Vec<ScheduleConfig>> {
    let mut all: HashMap<String, ScheduleConfig> =
        scheduler.configured.iter().map(|s| (s.name.clone(), s.clone())).collect();
    let rows: Vec<ScheduleRow> = sqlx::query_as("select name, cron, automation, params, enabled from schedules")
        .fetch_all(&scheduler.pool)
        .await?;
    for ScheduleRow { name, cron, automation, params, enabled } in rows {
        all.insert(name.clone(), ScheduleConfig { name, cron, automation, params: params.map(|p| p.0), enabled });
    }
    Ok(all.into_values().filter(|s| s.enabled).collect())
}

pub fn parse_cron(pattern: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder().seconds(Seconds::Optional).build().parse(pattern)
}

#[derive(Default)]
struct Schedules {
    active: Vec<Active>,
}

struct Active {
    schedule: ScheduleConfig,
    cron: Cron,
    next: DateTime<Utc>,
}

impl Schedules {
    /// Takes a new list; a schedule that did not change keeps its next tick.
    fn replace(&mut self, list: Vec<ScheduleConfig>, now: DateTime<Utc>) {
        let mut previous: HashMap<String, Active> =
            self.active.drain(..).map(|a| (a.schedule.name.clone(), a)).collect();
        for schedule in list {
            if let Some(active) = previous.remove(&schedule.name)
                && active.schedule == schedule
            {
                self.active.push(active);
                continue;
            }
            match parse_cron(&schedule.cron)
                .and_then(|cron| cron.find_next_occurrence(&now, false).map(|next| (cron, next)))
            {
                Ok((cron, next)) => self.active.push(Active { schedule, cron, next }),
                Err(error) => {
                    tracing::error!(schedule = %schedule.name, cron = %schedule.cron, %error, "a schedule's cron pattern is invalid; it does not fire")
                }
            }
        }
    }

    async fn fire_due(&mut self, scheduler: &Scheduler) {
        let now = Utc::now();
        for active in &mut self.active {
            if active.next > now {
                continue;
            }
            // The latest due tick, skipping any missed while nothing ran.
            let mut tick = active.next;
            while let Ok(next) = active.cron.find_next_occurrence(&tick, false) {
                if next > now {
                    break;
                }
                tick = next;
            }
            match fire(scheduler, &active.schedule, tick).await {
                Ok(Fired::Here) => tracing::info!(schedule = %active.schedule.name, tick = %tick, "schedule fired"),
                Ok(Fired::Elsewhere) => {
                    tracing::debug!(schedule = %active.schedule.name, tick = %tick, "another worker fired this tick")
                }
                // Said as an error already; the tick passes unfired.
                Ok(Fired::Not) => {}
                Err(error) => {
                    tracing::debug!(%error, schedule = %active.schedule.name, "could not fire; trying again");
                    continue;
                }
            }
            if let Ok(next) = active.cron.find_next_occurrence(&tick, false) {
                active.next = next;
            }
        }
    }
}

/// What became of a due tick.
enum Fired {
    /// This worker fired it.
    Here,
    /// Another worker had.
    Elsewhere,
    /// Nobody can: the automation it names is not registered.
    Not,
}

/// Fires one tick: the tick row and its run in one transaction.
async fn fire(scheduler: &Scheduler, schedule: &ScheduleConfig, tick: DateTime<Utc>) -> sqlx::Result<Fired> {
    let tick = tick.trunc_subsecs(0);
    let Some(spec) = scheduler.registry.get(&schedule.automation) else {
        tracing::error!(schedule = %schedule.name, automation = %schedule.automation, tick = %tick, "a schedule names no registered automation; this tick is not fired");
        return Ok(Fired::Not);
    };
    let run_id = derived_id(&format!("schedule:{}", schedule.name), &tick.to_rfc3339());
    let mut tx = scheduler.pool.begin().await?;
    let inserted =
        sqlx::query("insert into schedule_ticks (schedule_name, tick_at, run_id, fired_at) values (?, ?, ?, ?)")
            .bind(&schedule.name)
            .bind(tick.naive_utc())
            .bind(run_id.hyphenated())
            .bind(Utc::now())
            .execute(&mut *tx)
            .await;
    match inserted {
        Ok(_) => {}
        Err(error) if db::classify(&error) == Failure::Duplicate => return Ok(Fired::Elsewhere),
        Err(error) => return Err(error),
    }
    let now = Utc::now();
    let run = Run {
        seq: 0,
        id: run_id,
        automation: schedule.automation.clone(),
        params: schedule.params.clone().map(Json),
        state: RunState::Queued,
        attempts: 0,
        max_attempts: spec.max_attempts(),
        result: None,
        error: None,
        run_at: None,
        event_id: None,
        schedule_name: Some(schedule.name.clone()),
        requested_by: Some(format!("schedule:{}", schedule.name)),
        created_at: now,
        started_at: None,
        finished_at: None,
        updated_at: now,
        traceparent: None,
        tracestate: None,
    };
    runs::insert(&mut *tx, &run).await?;
    let outbox = vec![tasks::start_message(run.id, 1)];
    event_rows::insert_outbox(&mut tx, &outbox).await?;
    tx.commit().await?;
    let _ = scheduler.outbox.send(outbox).await;
    Ok(Fired::Here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_patterns_parse() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok());
        assert!(parse_cron("every tuesday").is_err());
    }
}
