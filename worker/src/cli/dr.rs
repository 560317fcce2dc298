//! `automation-worker dr`: the disaster-recovery steps the scripts `scripts/failover.sh`,
//! `scripts/failback.sh` and `scripts/dr-standby.sh` are made of. The database part (`status`,
//! `promote`, `fence`, `replicate-from`) speaks to the server of `DATABASE_URL`, which must be an
//! administrator's (it stops replication and sets `read_only`); it knows MariaDB 10.11 and MySQL 8
//! apart and uses each one's statements. The broker part (`link`, `replay`, `queues`) keeps the DR
//! region's copy of every event published in the primary (docs/operations.md, "Disaster
//! recovery"). Every command checks before it changes anything and says no with exit 5
//! ([`Refused`]) on the wrong server.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use automation_shared::config::Config;
use automation_shared::events::{EventType, WorkQueue};
use automation_shared::exit::{Refused, Usage};
use automation_shared::messaging::{self, Names, Outgoing, Publisher};
use clap::Subcommand;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use serde::Serialize;
use serde_json::json;
use sqlx::mysql::MySqlRow;
use sqlx::{MySqlConnection, Row as _};

#[derive(Subcommand)]
pub enum Command {
    /// The database server's identity and replication role (primary, replica, fenced).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make this replica the primary: stop taking from the old primary, apply everything it
    /// received, stop replication, forget the source, read_only off. Refuses (exit 5) a server
    /// that is a primary already, is not --expect-server-id, or still receives from a live
    /// primary (unless --force).
    Promote {
        /// Refuse unless the server's @@server_id is this (the DR database's, from its config).
        #[arg(long, value_name = "ID")]
        expect_server_id: Option<u64>,
        /// A planned switch: first wait until this GTID position (the old primary's, after it was
        /// fenced) has been received and applied. MariaDB `0-1-123`, MySQL `uuid:1-123`.
        #[arg(long, value_name = "GTID")]
        until_gtid: Option<String>,
        /// Promote although the replica is still connected to its primary, or its applier stopped
        /// on an error (what it had not applied is then lost).
        #[arg(long)]
        force: bool,
        /// How long to wait for the received transactions to be applied.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// read_only on (MySQL: super_read_only too): no client writes any more; a failback's first
    /// step on the region being given up.
    Fence {
        #[arg(long, value_name = "ID")]
        expect_server_id: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Make this server a read-only replica of another (GTID auto-positioning) and start it.
    ReplicateFrom {
        #[arg(long, value_name = "HOST")]
        source_host: String,
        #[arg(long, value_name = "PORT", default_value_t = 3306)]
        source_port: u16,
        #[arg(long, value_name = "USER")]
        source_user: String,
        /// The environment variable holding the replication user's password.
        #[arg(long, value_name = "VAR", default_value = "DR_REPLICATION_PASSWORD")]
        source_password_env: String,
        /// MariaDB only: start from this position (set as gtid_slave_pos; what a re-seed's dump
        /// says). Without it the server's own position (gtid_current_pos) is used.
        #[arg(long, value_name = "GTID")]
        gtid_pos: Option<String>,
        #[arg(long, value_name = "ID")]
        expect_server_id: Option<u64>,
        /// Point it at another source although it replicates from one already.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Keep a copy of every event published in the primary region: declares the copy queue on
    /// the primary's broker (--primary-amqp) and the standby queue on this one (AMQP_URL). The
    /// shovel between them is set by scripts/dr-standby.sh (rabbitmqctl set_parameter shovel).
    Link {
        /// The primary region's broker.
        #[arg(long, value_name = "URL")]
        primary_amqp: String,
        /// How long the standby keeps each copy (must exceed the worst replication lag).
        #[arg(long, value_name = "MS", default_value_t = 3_600_000)]
        retention_ms: u64,
        #[arg(long)]
        json: bool,
    },
    /// Failover: move every copy in the standby queue into this broker's events exchange with its
    /// routing key and properties (the inbox skips the ones the replica had applied).
    Replay {
        #[arg(long)]
        json: bool,
    },
    /// Messages waiting in this broker's work, partition, retry and dead-letter queues (and the
    /// standby queue); with --wait-empty, waits until all but the standby queue are empty (a
    /// failback's drain; the deferral store is in the database and replicates).
    Queues {
        #[arg(long, value_name = "SECONDS")]
        wait_empty: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Status { json } => {
            let mut db = Server::connect(config).await?;
            let status = db.status().await?;
            print(json, &status, || status.describe());
            Ok(true)
        }
        Command::Promote { expect_server_id, until_gtid, force, timeout, json } => {
            let mut db = Server::connect(config).await?;
            let report =
                db.promote(expect_server_id, until_gtid.as_deref(), force, Duration::from_secs(timeout)).await?;
            print(json, &report, || report.describe());
            Ok(true)
        }
        Command::Fence { expect_server_id, json } => {
            let mut db = Server::connect(config).await?;
            let status = db.status().await?;
            status.expect_server(expect_server_id)?;
            db.set_read_only(true).await?;
            let status = db.status().await?;
            print(json, &status, || format!("fenced: read_only is on\n{}", status.describe()));
            Ok(true)
        }
        Command::ReplicateFrom {
            source_host,
            source_port,
            source_user,
            source_password_env,
            gtid_pos,
            expect_server_id,
            force,
            json,
        } => {
            let password = std::env::var(&source_password_env).map_err(|_| {
                automation_shared::config::ConfigError::key(
                    &source_password_env,
                    "is not set: the replication user's password (--source-password-env names the variable)",
                )
            })?;
            let source = Source { host: source_host, port: source_port, user: source_user, password };
            let mut db = Server::connect(config).await?;
            let status = db.replicate_from(&source, gtid_pos.as_deref(), expect_server_id, force).await?;
            let healthy = status.io_running.as_deref() == Some("Yes") && status.sql_running.as_deref() == Some("Yes");
            print(json, &status, || status.describe());
            Ok(healthy)
        }
        Command::Link { primary_amqp, retention_ms, json } => {
            let names = Names::new(config.amqp.prefix.clone());
            let primary = connect(&primary_amqp, "--primary-amqp", "automation-worker dr link (primary)").await?;
            declare_outbound(&primary.create_channel().await?, &names, retention_ms).await?;
            let _ = primary.close(200, "done".into()).await;
            let standby = connect(&config.amqp.url, "AMQP_URL", "automation-worker dr link (standby)").await?;
            declare_inbound(&standby.create_channel().await?, &names, retention_ms).await?;
            let _ = standby.close(200, "done".into()).await;
            let link = json!({
                "outbound": outbound(&names), "standby_exchange": standby_exchange(&names),
                "inbound": inbound(&names), "retention_ms": retention_ms,
            });
            print(json, &link, || {
                format!(
                    "primary broker: queue {} takes a copy of every event\nthis broker: exchange {} feeds queue {} (copies kept {} s)\nthe shovel from the first to the second is scripts/dr-standby.sh's part",
                    outbound(&names),
                    standby_exchange(&names),
                    inbound(&names),
                    retention_ms / 1000
                )
            });
            Ok(true)
        }
        Command::Replay { json } => {
            let names = Names::new(config.amqp.prefix.clone());
            let started = Instant::now();
            let moved = replay(&config.amqp.url, &names, json).await?;
            let report = json!({"replayed": moved, "ms": started.elapsed().as_millis() as u64, "into": names.events()});
            print(json, &report, || {
                format!(
                    "replayed {moved} events from {} into {} in {:?}",
                    inbound(&names),
                    names.events(),
                    started.elapsed()
                )
            });
            Ok(true)
        }
        Command::Queues { wait_empty, json } => {
            let names = Names::new(config.amqp.prefix.clone());
            let deadline = wait_empty.map(|s| Instant::now() + Duration::from_secs(s));
            loop {
                let depths = depths(config, &names).await?;
                let waiting: u64 = depths.iter().filter(|(q, _)| *q != inbound(&names)).map(|(_, n)| *n as u64).sum();
                let done = deadline.is_none() || waiting == 0;
                let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
                if done || timed_out {
                    let map: serde_json::Map<String, serde_json::Value> =
                        depths.iter().map(|(q, n)| (q.clone(), json!(n))).collect();
                    let report = json!({"queues": map, "work_waiting": waiting});
                    print(json, &report, || {
                        depths.iter().map(|(q, n)| format!("{n:>8}  {q}")).collect::<Vec<_>>().join("\n")
                    });
                    if timed_out && waiting > 0 {
                        anyhow::bail!(
                            "{waiting} messages still wait in the work queues after {}s",
                            wait_empty.unwrap_or(0)
                        );
                    }
                    return Ok(true);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string(value).unwrap_or_default());
    } else {
        println!("{}", text());
    }
}

// ---- the database ----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Dialect {
    MariaDb,
    MySql,
}

/// What `dr status` says about a server.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `primary` (no source, writable), `replica` (has a source), `fenced` (no source, read-only).
    role: &'static str,
    dialect: Dialect,
    version: String,
    server_id: u64,
    read_only: bool,
    /// The transactions this server has (MariaDB gtid_current_pos, MySQL gtid_executed).
    gtid_position: String,
    source: Option<String>,
    io_running: Option<String>,
    sql_running: Option<String>,
    seconds_behind_source: Option<String>,
    /// Received from the source (MariaDB Gtid_IO_Pos, MySQL Retrieved_Gtid_Set).
    received_gtid: Option<String>,
    last_io_error: Option<String>,
    last_sql_error: Option<String>,
}

impl Status {
    fn describe(&self) -> String {
        let mut lines = vec![
            format!("role: {}  ({:?} {}, server_id {})", self.role, self.dialect, self.version, self.server_id),
            format!("read_only: {}", if self.read_only { "on" } else { "off" }),
            format!("gtid position: {}", self.gtid_position),
        ];
        if let Some(source) = &self.source {
            lines.push(format!(
                "replicating from {source}: io {} sql {}, {} s behind, received {}",
                self.io_running.as_deref().unwrap_or("?"),
                self.sql_running.as_deref().unwrap_or("?"),
                self.seconds_behind_source.as_deref().unwrap_or("NULL"),
                self.received_gtid.as_deref().unwrap_or("")
            ));
        }
        for (what, error) in [("io", &self.last_io_error), ("sql", &self.last_sql_error)] {
            if let Some(error) = error.as_deref().filter(|e| !e.is_empty()) {
                lines.push(format!("last {what} error: {error}"));
            }
        }
        lines.join("\n")
    }

    fn expect_server(&self, expected: Option<u64>) -> anyhow::Result<()> {
        match expected {
            Some(id) if id != self.server_id => Err(Refused(format!(
                "this server's server_id is {}, not {id}: DATABASE_URL points at another server than the one named",
                self.server_id
            ))
            .into()),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Serialize)]
struct Promotion {
    promoted: bool,
    server_id: u64,
    /// The replica was not replicating any more (a re-run after a promotion that stopped half-way).
    was_replicating: bool,
    applied_gtid: String,
    waited_ms: u64,
    forced: bool,
    status: Status,
}

impl Promotion {
    fn describe(&self) -> String {
        format!(
            "promoted server {} to primary (applied up to {}, waited {} ms for the applier{})\n{}",
            self.server_id,
            self.applied_gtid,
            self.waited_ms,
            if self.forced { ", forced" } else { "" },
            self.status.describe()
        )
    }
}

struct Source {
    host: String,
    port: u16,
    user: String,
    password: String,
}

struct Server {
    connection: MySqlConnection,
    dialect: Dialect,
}

/// A string literal for statements that take no placeholders (CHANGE MASTER).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn column(row: &MySqlRow, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| row.try_get_unchecked::<Option<String>, _>(*name).ok().flatten())
}

impl Server {
    async fn connect(config: &Config) -> anyhow::Result<Server> {
        use sqlx::ConnectOptions as _;
        // Without the database: a fresh replica has none yet, and these statements are the server's.
        let options = config.database.connect_options()?.database("");
        let mut connection = options
            .connect()
            .await
            .context("could not connect to MySQL (check DATABASE_URL: an administrator's, for the dr commands)")?;
        let version: String = sqlx::query_scalar("select version()").fetch_one(&mut connection).await?;
        let dialect = if version.to_lowercase().contains("mariadb") { Dialect::MariaDb } else { Dialect::MySql };
        Ok(Server { connection, dialect })
    }

    async fn text(&mut self, sql: &str) -> anyhow::Result<String> {
        let value: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut self.connection)
            .await
            .with_context(|| format!("{sql} failed"))?;
        Ok(value.unwrap_or_default())
    }

    async fn execute(&mut self, sql: &str) -> anyhow::Result<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut self.connection).await.with_context(|| {
            format!("{} failed (does DATABASE_URL's user have the replication and admin rights?)", redact(sql))
        })?;
        Ok(())
    }

    async fn status(&mut self) -> anyhow::Result<Status> {
        let version = self.text("select version()").await?;
        let server_id: u64 = self.text("select cast(@@global.server_id as char)").await?.parse().unwrap_or(0);
        let read_only = matches!(self.text("select cast(@@global.read_only as char)").await?.as_str(), "1" | "ON");
        let gtid_position = match self.dialect {
            Dialect::MariaDb => self.text("select cast(@@global.gtid_current_pos as char)").await?,
            Dialect::MySql => self.text("select cast(@@global.gtid_executed as char)").await?,
        };
        let row = sqlx::raw_sql("show replica status").fetch_optional(&mut self.connection).await.context(
            "show replica status failed (does DATABASE_URL's user have REPLICATION CLIENT / SLAVE MONITOR?)",
        )?;
        let (mut source, mut io_running, mut sql_running, mut behind, mut received, mut io_error, mut sql_error) =
            (None, None, None, None, None, None, None);
        if let Some(row) = &row {
            let host = column(row, &["Master_Host", "Source_Host"]).unwrap_or_default();
            let port = column(row, &["Master_Port", "Source_Port"]).unwrap_or_default();
            if !host.is_empty() {
                source = Some(format!("{host}:{port}"));
            }
            io_running = column(row, &["Slave_IO_Running", "Replica_IO_Running"]);
            sql_running = column(row, &["Slave_SQL_Running", "Replica_SQL_Running"]);
            behind = column(row, &["Seconds_Behind_Master", "Seconds_Behind_Source"]);
            received = column(row, &["Gtid_IO_Pos", "Retrieved_Gtid_Set"]);
            io_error = column(row, &["Last_IO_Error"]);
            sql_error = column(row, &["Last_SQL_Error"]);
        }
        let role = match (&source, read_only) {
            (Some(_), _) => "replica",
            (None, true) => "fenced",
            (None, false) => "primary",
        };
        Ok(Status {
            role,
            dialect: self.dialect,
            version,
            server_id,
            read_only,
            gtid_position,
            source,
            io_running,
            sql_running,
            seconds_behind_source: behind,
            received_gtid: received,
            last_io_error: io_error,
            last_sql_error: sql_error,
        })
    }

    /// Waits until every transaction of `gtid` is applied here; whether it was within `timeout`.
    async fn wait_applied(&mut self, gtid: &str, timeout: Duration) -> anyhow::Result<bool> {
        if gtid.trim().is_empty() {
            return Ok(true);
        }
        let sql = match self.dialect {
            // 0 when reached, -1 on timeout.
            Dialect::MariaDb => "select cast(master_gtid_wait(?, ?) as signed)",
            // 0 when reached, 1 on timeout.
            Dialect::MySql => "select cast(wait_for_executed_gtid_set(?, ?) as signed)",
        };
        let result: i64 =
            sqlx::query_scalar(sql).bind(gtid).bind(timeout.as_secs_f64()).fetch_one(&mut self.connection).await?;
        Ok(result == 0)
    }

    async fn set_read_only(&mut self, on: bool) -> anyhow::Result<()> {
        let value = if on { 1 } else { 0 };
        match self.dialect {
            // MariaDB has no SET PERSIST: the server's option file must say the same (read_only
            // on in the standby's my.cnf is the safe default; docs/operations.md says when to change it).
            Dialect::MariaDb => self.execute(&format!("set global read_only = {value}")).await,
            // super_read_only keeps administrators out too; read_only off turns it off as well.
            Dialect::MySql if on => self.execute("set persist super_read_only = 1").await,
            Dialect::MySql => {
                self.execute("set persist super_read_only = 0").await?;
                self.execute("set persist read_only = 0").await
            }
        }
    }

    async fn promote(
        &mut self,
        expect_server_id: Option<u64>,
        until_gtid: Option<&str>,
        force: bool,
        timeout: Duration,
    ) -> anyhow::Result<Promotion> {
        let before = self.status().await?;
        before.expect_server(expect_server_id)?;
        if before.role == "primary" {
            return Err(Refused(format!(
                "server {} is a primary already (no replication source, read_only off): nothing to promote; is DATABASE_URL the DR database?",
                before.server_id
            ))
            .into());
        }
        let was_replicating = before.source.is_some();
        if before.io_running.as_deref() == Some("Yes") && !force && until_gtid.is_none() {
            return Err(Refused(format!(
                "server {} is still connected to its primary {} (replica io thread running): the primary is alive. Fence it and switch over (scripts/failback.sh does), or pass --force if it must go",
                before.server_id,
                before.source.as_deref().unwrap_or("?")
            ))
            .into());
        }
        if was_replicating && before.sql_running.as_deref() != Some("Yes") && !force {
            return Err(Refused(format!(
                "the replica's applier is stopped ({}): what it received but did not apply would be lost; fix and START REPLICA SQL_THREAD, or pass --force",
                before.last_sql_error.as_deref().filter(|e| !e.is_empty()).unwrap_or("no error given")
            ))
            .into());
        }
        let started = Instant::now();
        if let Some(gtid) = until_gtid
            && !self.wait_applied(gtid, timeout).await?
        {
            anyhow::bail!("{gtid} was not applied within {timeout:?}: nothing was changed; is the replica connected?");
        }
        let mut applied = before.gtid_position.clone();
        if was_replicating {
            // Nothing more from the old primary (if it comes back), then apply what arrived.
            self.execute("stop replica io_thread").await?;
            let received = self.status().await?.received_gtid.unwrap_or_default();
            if before.sql_running.as_deref() == Some("Yes") && !self.wait_applied(&received, timeout).await? {
                anyhow::bail!(
                    "the replica did not apply what it received ({received}) within {timeout:?}; its io thread is stopped, nothing else was changed: run promote again to wait longer"
                );
            }
            applied = received;
            self.execute("stop replica").await?;
            self.execute("reset replica all").await?;
        }
        self.set_read_only(false).await?;
        let status = self.status().await?;
        Ok(Promotion {
            promoted: true,
            server_id: status.server_id,
            was_replicating,
            applied_gtid: applied,
            waited_ms: started.elapsed().as_millis() as u64,
            forced: force,
            status,
        })
    }

    async fn replicate_from(
        &mut self,
        source: &Source,
        gtid_pos: Option<&str>,
        expect_server_id: Option<u64>,
        force: bool,
    ) -> anyhow::Result<Status> {
        let before = self.status().await?;
        before.expect_server(expect_server_id)?;
        let target = format!("{}:{}", source.host, source.port);
        if let Some(current) = &before.source
            && current != &target
            && !force
        {
            return Err(Refused(format!(
                "server {} replicates from {current} already; pass --force to point it at {target}",
                before.server_id
            ))
            .into());
        }
        if !source.host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c)) {
            return Err(Usage(format!("--source-host {:?} is not a host name", source.host)).into());
        }
        // Read-only first: from here on no client write can diverge it from its source.
        self.set_read_only(true).await?;
        self.execute("stop replica").await?;
        match self.dialect {
            Dialect::MariaDb => {
                if let Some(position) = gtid_pos {
                    self.execute(&format!("set global gtid_slave_pos = {}", literal(position))).await?;
                }
                // current_pos: what it has, replicated or written itself (a former primary's own
                // writes are in its source's binlog after a re-seed or a switch-over).
                let using = if gtid_pos.is_some() { "slave_pos" } else { "current_pos" };
                self.execute(&format!(
                    "change master to master_host = {}, master_port = {}, master_user = {}, master_password = {}, master_use_gtid = {using}, master_connect_retry = 1",
                    literal(&source.host),
                    source.port,
                    literal(&source.user),
                    literal(&source.password)
                ))
                .await?;
            }
            Dialect::MySql => {
                if gtid_pos.is_some() {
                    return Err(Usage(
                        "--gtid-pos is MariaDB's; on MySQL 8 the dump's SET @@GLOBAL.GTID_PURGED positions the replica"
                            .into(),
                    )
                    .into());
                }
                self.execute(&format!(
                    "change replication source to source_host = {}, source_port = {}, source_user = {}, source_password = {}, source_auto_position = 1, source_connect_retry = 1, get_source_public_key = 1",
                    literal(&source.host),
                    source.port,
                    literal(&source.user),
                    literal(&source.password)
                ))
                .await?;
            }
        }
        self.execute("start replica").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status().await?;
            let running = status.io_running.as_deref() == Some("Yes") && status.sql_running.as_deref() == Some("Yes");
            if running || Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A statement for an error message, without its password.
fn redact(sql: &str) -> String {
    match sql.find("password") {
        Some(at) => format!("{} …", &sql[..at]),
        None => sql.to_string(),
    }
}

// ---- the broker ------------------------------------------------------------------------------

/// On the primary's broker: a copy of everything the events exchange takes.
pub fn outbound(names: &Names) -> String {
    format!("{}.dr.outbound", names.prefix())
}

/// On the DR broker: where the shovel puts the copies (a fanout, so each keeps its routing key).
pub fn standby_exchange(names: &Names) -> String {
    format!("{}.dr.standby", names.prefix())
}

/// On the DR broker: the copies, kept for the retention.
pub fn inbound(names: &Names) -> String {
    format!("{}.dr.inbound", names.prefix())
}

/// Connects to the broker `url` names (one address or a comma-separated list, as `AMQP_URL`);
/// `key` names the setting in errors.
async fn connect(url: &str, key: &str, name: &str) -> anyhow::Result<lapin::Connection> {
    let addresses =
        messaging::Addresses::parse(url).map_err(|error| automation_shared::config::ConfigError::key(key, error))?;
    messaging::connect_with_patience(&addresses, name, Duration::from_secs(15))
        .await
        .with_context(|| format!("could not connect to RabbitMQ at {} ({key})", addresses.describe()))
}

fn copy_queue_arguments(retention_ms: u64) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(ShortString::from("x-queue-type"), AMQPValue::LongString(LongString::from(b"quorum".to_vec())));
    table.insert(ShortString::from("x-message-ttl"), AMQPValue::LongLongInt(retention_ms as i64));
    table
}

/// The copy queue takes what `commands` and `tasks` take: every event type's routing key, and what
/// the unrouted exchange catches (so the alternate-exchange path of unknown types is unchanged:
/// a `#` binding would route them here and keep them from the alternate exchange).
async fn declare_outbound(channel: &Channel, names: &Names, retention_ms: u64) -> anyhow::Result<()> {
    let queue = outbound(names);
    channel
        .queue_declare(
            queue.clone().into(),
            QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
            copy_queue_arguments(retention_ms),
        )
        .await
        .with_context(|| {
            format!("could not declare {queue} on the primary's broker (run `automation-worker topology` there first?)")
        })?;
    for event_type in EventType::ALL {
        channel
            .queue_bind(
                queue.clone().into(),
                names.events().into(),
                event_type.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_bind(
            queue.into(),
            names.unrouted().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

async fn declare_inbound(channel: &Channel, names: &Names, retention_ms: u64) -> anyhow::Result<()> {
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(standby_exchange(names).into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await?;
    channel
        .queue_declare(
            inbound(names).into(),
            QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() },
            copy_queue_arguments(retention_ms),
        )
        .await?;
    channel
        .queue_bind(
            inbound(names).into(),
            standby_exchange(names).into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Moves the standby queue into the events exchange in batches: published with confirms, then
/// acked. A crash between the two replays a batch twice; the inbox makes that harmless. Moves what
/// the queue held when it started (the shovel is removed first, so nothing new comes), and stops
/// early if nothing arrives for 5 s (copies expire while it runs).
async fn replay(url: &str, names: &Names, json: bool) -> anyhow::Result<u64> {
    use futures_util::StreamExt as _;
    let connection = std::sync::Arc::new(connect(url, "AMQP_URL", "automation-worker dr replay").await?);
    let publisher = Publisher::new(connection.clone(), Duration::from_secs(30)).await?;
    let channel = connection.create_channel().await?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let total = channel
        .queue_declare(inbound(names).into(), passive, FieldTable::default())
        .await
        .with_context(|| {
            format!("{} does not exist on this broker: was the standby linked (scripts/dr-standby.sh)?", inbound(names))
        })?
        .message_count() as u64;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(inbound(names).into(), "dr-replay".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let events = names.events();
    let mut moved = 0u64;
    'batches: while moved < total {
        let mut batch = Vec::new();
        while batch.len() < 500 && moved + (batch.len() as u64) < total {
            let patience = if batch.is_empty() { Duration::from_secs(5) } else { Duration::from_millis(50) };
            match tokio::time::timeout(patience, consumer.next()).await {
                Ok(Some(delivery)) => batch.push(delivery?),
                Ok(None) => break 'batches,
                Err(_) => break,
            }
        }
        let Some(last) = batch.last() else { break };
        let acker = last.acker.clone();
        let messages = batch
            .iter()
            .map(|d| Outgoing {
                exchange: &events,
                routing_key: d.routing_key.as_str(),
                body: &d.data,
                properties: d.properties.clone(),
                mandatory: false,
            })
            .collect();
        publisher.publish_all(messages).await.map_err(|e| anyhow::anyhow!("republishing into {events} failed: {e}"))?;
        acker.ack(BasicAckOptions { multiple: true }).await?;
        moved += batch.len() as u64;
        if !json {
            eprintln!("replayed {moved} of {total}…");
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(moved)
}

async fn depths(config: &Config, names: &Names) -> anyhow::Result<Vec<(String, u32)>> {
    let connection = connect(&config.amqp.url, "AMQP_URL", "automation-worker dr queues").await?;
    let mut queues = vec![names.work_queue(WorkQueue::Commands), names.work_queue(WorkQueue::Tasks)];
    queues.extend((0..config.worker.partitions).map(|index| names.partition(index)));
    // A retry waiting out its delay (the competing layout) and a dead letter on its way to the
    // store are work too: a drain waits for them.
    for queue in WorkQueue::ALL {
        queues.extend(config.worker.retry_delays_ms.iter().map(|delay| names.retry_queue(queue, *delay)));
    }
    queues.push(names.dead_letter_queue());
    queues.push(inbound(names));
    let mut depths = Vec::new();
    for queue in queues {
        // A passive declare of a missing queue closes its channel: one channel each.
        let channel = connection.create_channel().await?;
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        if let Ok(declared) = channel.queue_declare(queue.clone().into(), passive, FieldTable::default()).await {
            depths.push((queue, declared.message_count()));
            let _ = channel.close(200, "ok".into()).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(depths)
}
