//! The ops subcommands: `migrate`, `topology`, `audit verify`, `dlq` (in [`dlq`]) and `dr` (in [`dr`]). Each
//! prints what it did for a person, or JSON with `--json`, and exits non-zero with a message that
//! says what to do.

pub mod dlq;
pub mod dr;

use std::time::Duration;

use anyhow::Context as _;
use automation_shared::config::Config;
use automation_shared::db::{self, MIGRATOR};
use automation_shared::messaging::{self, Names};
use serde_json::json;

use crate::broker;

pub async fn migrate(config: &Config, json: bool) -> anyhow::Result<()> {
    create_database_if_missing(config).await?;
    let pool = db::connect(&config.database).await.context("could not connect to MySQL (check DATABASE_URL)")?;
    let before: Vec<i64> = applied_versions(&pool).await;
    MIGRATOR.run(&pool).await.context("a migration failed; the database is left as the failing migration found it")?;
    let after: Vec<i64> = applied_versions(&pool).await;
    let new: Vec<_> = MIGRATOR
        .iter()
        .filter(|m| after.contains(&m.version) && !before.contains(&m.version))
        .map(|m| json!({"version": m.version, "description": m.description}))
        .collect();
    if json {
        println!("{}", json!({"applied": new, "total": after.len()}));
    } else if new.is_empty() {
        println!("database is up to date ({} migrations applied)", after.len());
    } else {
        for m in &new {
            println!("applied {} {}", m["version"], m["description"].as_str().unwrap_or_default());
        }
        println!("database is up to date ({} migrations applied)", after.len());
    }
    Ok(())
}

/// A fresh server has no database yet: create it, so `migrate` is the only set-up step.
async fn create_database_if_missing(config: &Config) -> anyhow::Result<()> {
    let options = config.database.connect_options()?;
    let Some(name) = options.get_database().map(str::to_string) else {
        return Err(automation_shared::config::ConfigError::key(
            "DATABASE_URL",
            "names no database (mysql://user:password@host:3306/automation)",
        )
        .into());
    };
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        anyhow::bail!("the database name {name:?} has characters this command will not quote; create it by hand");
    }
    let server = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(options.database(""))
        .await
        .context("could not connect to MySQL (check DATABASE_URL)")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database if not exists `{name}`")))
        .execute(&server)
        .await
        .with_context(|| {
            format!("database {name} does not exist and could not be created; create it or grant CREATE")
        })?;
    server.close().await;
    Ok(())
}

async fn applied_versions(pool: &sqlx::MySqlPool) -> Vec<i64> {
    sqlx::query_scalar("select version from _sqlx_migrations where success = true order by version")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

/// A CLI command's connection to the nodes of `AMQP_URL`, waiting up to 15 s for one to answer.
pub(crate) async fn connect_broker(config: &Config, name: &str) -> anyhow::Result<lapin::Connection> {
    messaging::connect_with_patience(&config.amqp.addresses()?, name, Duration::from_secs(15))
        .await
        .context("could not connect to RabbitMQ (check AMQP_URL)")
}

pub async fn topology(config: &Config, json: bool) -> anyhow::Result<()> {
    let connection = connect_broker(config, "automation-worker topology").await?;
    let names = Names::new(config.amqp.prefix.clone());
    broker::declare_topology(&connection, &names, config).await?;
    let _ = connection.close(200, "done".into()).await;
    let mut queues = vec![
        names.work_queue(automation_shared::events::WorkQueue::Commands),
        names.work_queue(automation_shared::events::WorkQueue::Tasks),
    ];
    queues.extend((0..config.worker.partitions).map(|index| names.partition(index)));
    for queue in automation_shared::events::WorkQueue::ALL {
        queues.extend(config.worker.retry_delays_ms.iter().map(|d| names.retry_queue(queue, *d)));
    }
    queues.push(names.dead_letter_queue());
    let exchanges = [names.events(), names.notifications(), names.dead(), names.unrouted()];
    if json {
        println!("{}", json!({"exchanges": exchanges, "queues": queues}));
    } else {
        println!("declared exchanges: {}", exchanges.join(", "));
        println!("declared queues: {}", queues.join(", "));
    }
    Ok(())
}

/// `topology --permissions`: the `rabbitmqctl` commands that hold each publisher of
/// `AUTOMATION_WORKER__PUBLISHERS` to its types at the broker (write on the events exchange only,
/// topic permissions on its routing keys), whether or not it sets `user_id`.
pub fn publisher_permissions(config: &Config, json: bool) -> anyhow::Result<()> {
    let names = Names::new(config.amqp.prefix.clone());
    let exchange = names.events();
    let vhost = config.amqp.addresses()?.vhost().to_string();
    let system = automation_shared::messaging::SystemUsers::of(&config.amqp);
    let mut publishers = Vec::new();
    for (user, patterns) in &config.worker.publishers {
        if system.contains(user) {
            anyhow::bail!(
                "AUTOMATION_WORKER__PUBLISHERS names {user:?}, which is the system's own AMQP user: give the publisher a user of its own"
            );
        }
        let topics = format!("^({})$", patterns.iter().map(|p| routing_key_regex(p)).collect::<Vec<_>>().join("|"));
        let commands = [
            format!("rabbitmqctl add_user {user} \"$PUBLISHER_PASSWORD\"   # once"),
            format!("rabbitmqctl set_permissions -p {vhost} {user} '^$' '^{}$' '^$'", regex_escape(&exchange)),
            format!("rabbitmqctl set_topic_permissions -p {vhost} {user} {exchange} '{topics}' '^$'"),
        ];
        publishers.push(json!({"user": user, "types": patterns, "topics": topics, "commands": commands}));
    }
    if json {
        println!("{}", json!({"vhost": vhost, "exchange": exchange, "publishers": publishers}));
        return Ok(());
    }
    if publishers.is_empty() {
        println!("# AUTOMATION_WORKER__PUBLISHERS is empty: every publisher may send every public type.");
        println!("# Name each publishing service's AMQP user and its types there, e.g. {{orders=[\"approval.*\"]}}.");
    }
    for publisher in &publishers {
        println!("# {} may publish {}", publisher["user"].as_str().unwrap_or(""), publisher["types"]);
        for command in publisher["commands"].as_array().into_iter().flatten() {
            println!("{}", command.as_str().unwrap_or(""));
        }
    }
    Ok(())
}

/// A type pattern of `AUTOMATION_WORKER__PUBLISHERS` (`approval.*`) as a regular expression over
/// routing keys, as RabbitMQ's topic permissions take it.
fn routing_key_regex(pattern: &str) -> String {
    match pattern.strip_suffix('*') {
        Some(prefix) => format!("{}.*", regex_escape(prefix)),
        None => regex_escape(pattern),
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { vec![c] } else { vec!['\\', c] })
        .collect()
}

/// `topology --delete`: removes every exchange and queue under the prefix, messages included.
pub async fn delete_topology(config: &Config, yes: bool) -> anyhow::Result<()> {
    let names = Names::new(config.amqp.prefix.clone());
    if !yes {
        anyhow::bail!(
            "this deletes every exchange and queue named {}.*, with the messages in them; add --yes to go ahead",
            names.prefix()
        );
    }
    let connection = connect_broker(config, "automation-worker topology").await?;
    let settings = automation_shared::messaging::topology::TopologySettings::of(&config.worker);
    automation_shared::messaging::topology::delete(&connection, &names, &settings).await?;
    let _ = connection.close(200, "done".into()).await;
    println!("deleted the exchanges and queues of prefix {}", names.prefix());
    Ok(())
}

/// `audit verify`: exit status 0 when intact, 1 when something was changed or removed.
pub async fn audit_verify(config: &Config, json: bool) -> anyhow::Result<bool> {
    let pool = db::connect(&config.database).await.context("could not connect to MySQL (check DATABASE_URL)")?;
    let report = db::audit::verify(&pool, config.audit.key.as_deref(), |n| {
        if !json {
            eprintln!("checked {n} records…");
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{} records in {} chains, {} seals", report.records, report.chains, report.seals);
        if report.is_intact() {
            println!("the audit log is intact");
        } else {
            println!("the audit log was tampered with ({} problems):", report.problems.len());
            for problem in &report.problems {
                println!("  - {problem}");
            }
        }
    }
    Ok(report.is_intact())
}
