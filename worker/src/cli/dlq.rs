//! `automation-worker dlq list|show|replay|discard`: the dead-letter store from a terminal.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use automation_shared::config::Config;
use automation_shared::db::audit::{ActorType, AuditChain};
use automation_shared::db::dead_letters::{self, DeadLetterSummary, Filter};
use automation_shared::dead_letters::{self as actions, ActionReport, Operator};
use automation_shared::exit::{NotFound, Usage};
use automation_shared::messaging::{Names, Publisher, SystemUsers};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List dead letters, newest first.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print one JSON document instead of text (for scripts and jq).
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter whole: reason, headers, history, body.
    Show {
        /// The dead letter's id (the first column of `dlq list`).
        id: Uuid,
        /// Print one JSON document instead of text (for scripts and jq).
        #[arg(long)]
        json: bool,
        /// Write only the body, byte for byte, to stdout.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
    },
    /// Publish dead letters again, each with the broker's confirm, keeping their event ids: an
    /// event already applied is not applied twice.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// At most this many per second.
        #[arg(long, value_name = "PER_SECOND")]
        rate: Option<f64>,
    },
    /// Mark dead letters discarded: kept for the record, never replayed by a filter again.
    Discard {
        #[command(flatten)]
        selection: Selection,
    },
}

#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// Exact event type, e.g. approval.decided.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Text the reason contains, e.g. schema_invalid.
    #[arg(long)]
    reason: Option<String>,
    /// poison, exhausted or delivery_limit.
    #[arg(long)]
    kind: Option<String>,
    /// The queue it died in, e.g. automation.commands.
    #[arg(long)]
    origin: Option<String>,
    /// dead, replayed or discarded (replay and discard default to dead).
    #[arg(long)]
    state: Option<String>,
    /// Died at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Died before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    /// The filter, or which flag cannot be used as written.
    fn to_filter(&self) -> anyhow::Result<Filter> {
        let filter = Filter {
            event_type: self.event_type.clone(),
            reason: self.reason.clone(),
            error_kind: self.kind.clone(),
            origin_queue: self.origin.clone(),
            state: self.state.clone(),
            since: self.since,
            until: self.until,
        };
        match filter.invalid_field() {
            None => Ok(filter),
            Some((field, message)) => {
                let flag = match field {
                    "type" => "--type",
                    "errorKind" => "--kind",
                    "originQueue" => "--origin",
                    _ => "--state",
                };
                Err(Usage(format!("{flag} {message}")).into())
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.event_type.is_none()
            && self.reason.is_none()
            && self.kind.is_none()
            && self.origin.is_none()
            && self.state.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

#[derive(Debug, Args)]
pub struct Selection {
    /// A dead letter's id (repeat for several).
    #[arg(long = "id")]
    ids: Vec<Uuid>,
    /// Every dead letter still dead.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// At most this many.
    #[arg(long)]
    limit: Option<u64>,
    /// Say what would happen; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON document instead of text: what matched and what was done.
    #[arg(long)]
    json: bool,
    /// Who is acting, for the audit log (default: $AUTOMATION_OPERATOR, then $USER; a replay
    /// or discard by nobody in particular is refused).
    #[arg(long = "as", value_name = "NAME")]
    operator: Option<String>,
}

pub async fn run(config: &Config, command: Command) -> anyhow::Result<bool> {
    let pool = automation_shared::db::connect(&config.database)
        .await
        .context("could not connect to MySQL (check DATABASE_URL)")?;
    match command {
        Command::List { filter, limit, json } => list(&pool, &filter.to_filter()?, limit, json).await,
        Command::Show { id, json, raw } => show(&pool, id, json, raw).await,
        Command::Replay { selection, rate } => act(config, &pool, selection, Action::Replay { rate }).await,
        Command::Discard { selection } => act(config, &pool, selection, Action::Discard).await,
    }
}

async fn list(pool: &sqlx::MySqlPool, filter: &Filter, limit: u32, json: bool) -> anyhow::Result<bool> {
    let rows = dead_letters::list(pool, filter, limit, None).await?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(true);
    }
    if rows.is_empty() {
        println!("no dead letters match");
        return Ok(true);
    }
    println!("{:<36}  {:<20}  {:<24}  {:<14}  {:>3}  {:<9}  REASON", "ID", "DEAD AT", "TYPE", "KIND", "ATT", "STATE");
    for row in &rows {
        print_row(row);
    }
    let total = dead_letters::count(pool, filter).await?;
    if total > rows.len() as u64 {
        println!("({} of {total} shown; narrow with filters or raise --limit)", rows.len());
    }
    Ok(true)
}

fn print_row(row: &DeadLetterSummary) {
    let reason: String = row.reason.chars().take(70).collect();
    println!(
        "{:<36}  {:<20}  {:<24}  {:<14}  {:>3}  {:<9}  {reason}",
        row.id,
        row.dead_at.format("%Y-%m-%d %H:%M:%S"),
        row.event_type.as_deref().unwrap_or("-"),
        row.error_kind,
        row.attempts,
        row.state
    );
}

async fn show(pool: &sqlx::MySqlPool, id: Uuid, json: bool, raw: bool) -> anyhow::Result<bool> {
    let Some(dead) = dead_letters::get(pool, id).await? else {
        return Err(NotFound(format!("no dead letter {id}; `dlq list` shows the ids")).into());
    };
    if raw {
        std::io::stdout().write_all(&dead.body)?;
        return Ok(true);
    }
    if json {
        let mut value = serde_json::to_value(&dead)?;
        value["body"] = json!(dead.body_text());
        println!("{}", serde_json::to_string(&value)?);
        return Ok(true);
    }
    let s = &dead.summary;
    println!("id            {}", s.id);
    println!(
        "event         {} ({})",
        s.event_id.as_deref().unwrap_or("-"),
        s.event_type.as_deref().unwrap_or("unknown type")
    );
    println!("reason        {}", s.reason);
    println!("kind          {}   attempts {}   state {}", s.error_kind, s.attempts, s.state);
    println!("origin        queue {}   routing key {}", s.origin_queue.as_deref().unwrap_or("-"), s.routing_key);
    println!("times         first failed {}   dead {}", s.first_failed_at, s.dead_at);
    if dead.replay_count > 0 {
        println!(
            "replayed      {} time(s), last by {} at {:?}",
            dead.replay_count,
            dead.replayed_by.as_deref().unwrap_or("-"),
            dead.replayed_at
        );
    }
    if let Some(by) = &dead.discarded_by {
        println!("discarded     by {by} at {:?}", dead.discarded_at);
    }
    println!("properties    {}", dead.properties.0);
    if let Some(history) = &dead.history {
        println!("history");
        for failure in history.0.as_array().into_iter().flatten() {
            println!(
                "  attempt {}  {}  {}: {}",
                failure["attempt"],
                failure["at"].as_str().unwrap_or("-"),
                failure["kind"].as_str().unwrap_or("-"),
                failure["error"].as_str().unwrap_or("-")
            );
        }
    }
    println!("body ({} bytes)", dead.body.len());
    match serde_json::from_slice::<serde_json::Value>(&dead.body) {
        Ok(value) => println!("{}", serde_json::to_string_pretty(&value)?),
        Err(_) => println!("{}", dead.body_text()),
    }
    Ok(true)
}

enum Action {
    Replay { rate: Option<f64> },
    Discard,
}

async fn act(config: &Config, pool: &sqlx::MySqlPool, selection: Selection, action: Action) -> anyhow::Result<bool> {
    if selection.ids.is_empty() && !selection.all && selection.filter.is_empty() {
        return Err(Usage(
            "say which dead letters: --id ID, a filter (--type, --reason, --kind, --origin, --since, --until), or --all"
                .into(),
        )
        .into());
    }
    let verb = match action {
        Action::Replay { .. } => "replay",
        Action::Discard => "discard",
    };
    let selected = actions::select(pool, &selection.ids, &selection.filter.to_filter()?, selection.limit).await?;
    let mut report =
        ActionReport { matched: selected.len() as u64, dry_run: selection.dry_run, ..ActionReport::default() };
    if selection.dry_run {
        report.ids = selected.iter().map(|d| d.summary.id).collect();
        if selection.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("would {verb} {} dead letter(s):", selected.len());
            for dead in &selected {
                print_row(&dead.summary);
            }
        }
        return Ok(true);
    }
    if selected.is_empty() && !selection.ids.is_empty() && selection.filter.is_empty() {
        let ids: Vec<String> = selection.ids.iter().map(Uuid::to_string).collect();
        return Err(NotFound(format!(
            "no dead letter {} is dead (replayed or discarded ones: `dlq list --state replayed|discarded`)",
            ids.join(", ")
        ))
        .into());
    }
    if selected.is_empty() {
        if selection.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("no dead letters match");
        }
        return Ok(true);
    }
    // Every replay and discard is audited with who did it: in a pod $USER is usually unset.
    let Some(name) = selection
        .operator
        .or_else(|| std::env::var("AUTOMATION_OPERATOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.trim().is_empty())
    else {
        return Err(Usage(format!(
            "who is acting? name yourself with --as NAME (or AUTOMATION_OPERATOR=NAME): every {verb} is audited with its operator"
        ))
        .into());
    };
    let operator = Operator { id: format!("cli:{name}"), actor_type: ActorType::User };
    let mut chain = AuditChain::new(config.audit.key.as_deref());
    let publisher = match action {
        Action::Replay { .. } => {
            let connection = super::connect_broker(config, "automation-worker dlq").await?;
            Some(
                Publisher::new(std::sync::Arc::new(connection), Duration::from_millis(config.amqp.publish_timeout_ms))
                    .await?,
            )
        }
        Action::Discard => None,
    };
    let names = Names::new(config.amqp.prefix.clone());
    let system = SystemUsers::of(&config.amqp);
    let pace = match action {
        Action::Replay { rate } => actions::pace(rate),
        Action::Discard => None,
    };
    if !selection.json {
        eprintln!("{verb}ing {} dead letter(s)…", selected.len());
    }
    let started = Instant::now();
    let mut last_progress = Instant::now();
    for (i, dead) in selected.iter().enumerate() {
        let tick = Instant::now();
        let outcome = match (&publisher, &action) {
            (Some(publisher), Action::Replay { .. }) => {
                actions::replay(pool, publisher, &names, &system, &mut chain, dead, &operator).await.map(|()| true)
            }
            _ => actions::discard(pool, &mut chain, dead, &operator).await,
        };
        report.record(dead.summary.id, outcome);
        if !selection.json && (last_progress.elapsed() >= Duration::from_secs(1) || i + 1 == selected.len()) {
            let rate = (i + 1) as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprintln!("  {}/{}  ({:.0}/s, {} failed)", i + 1, selected.len(), rate, report.failed.len());
            last_progress = Instant::now();
        }
        if let Some(pace) = pace {
            tokio::time::sleep(pace.saturating_sub(tick.elapsed())).await;
        }
    }
    if let Some(publisher) = publisher {
        publisher.close().await;
    }
    if selection.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{verb}ed {} of {} dead letter(s)", report.done, report.matched);
        for failure in &report.failed {
            println!("  failed {}: {}", failure.id, failure.error);
        }
    }
    Ok(report.failed.is_empty())
}
