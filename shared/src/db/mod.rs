//! MySQL: the pool, the migrations, how failures are told apart, and the queries both binaries
//! use (one module per entity).

pub mod approvals;
pub mod audit;
pub mod dead_letters;
pub mod deferrals;
pub mod events;
pub mod idempotency;
pub mod insights;
pub mod instances;
pub mod rules;
pub mod runs;
pub mod workflows;

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlDatabaseError, MySqlPool, MySqlPoolOptions};

use crate::config::DatabaseConfig;

/// The one migrator: `automation-worker migrate`, `make run` and the tests all use it.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The rows of a multi-row insert in statements of a few sizes only: hundreds, then the
/// remainder's powers of two. MySQL prepares each statement text once per connection, and the
/// text of a multi-row insert is its row count; batches of many sizes (a partition lane's batch is
/// whole packs) made every batch prepare its inserts again.
pub fn statement_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    const MOST: usize = 100;
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let take = if rest.len() >= MOST { MOST } else { 1 << rest.len().ilog2() };
        let (chunk, after) = rest.split_at(take);
        rest = after;
        Some(chunk)
    })
}

/// A pool that connects on first use, so a service starts (and reports itself not ready) while
/// MySQL is still down, then recovers by itself when it comes back.
pub fn lazy_pool(config: &DatabaseConfig) -> anyhow::Result<MySqlPool> {
    let options = config.connect_options()?;
    Ok(pool_options(config).connect_lazy_with(options))
}

/// A pool that connects now: for CLI commands, which should fail fast with a clear message.
pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<MySqlPool> {
    let options = config.connect_options()?;
    Ok(pool_options(config).connect_with(options).await?)
}

fn pool_options(config: &DatabaseConfig) -> MySqlPoolOptions {
    let lock_wait = config.lock_wait_timeout_secs.max(1);
    MySqlPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        // No ping before each use: it would add a round trip to every transaction. A connection
        // that died with the server fails its first statement, which is classified as
        // `Unavailable` and retried on a fresh connection.
        .test_before_acquire(false)
        // After an outage no connection opened before it is used again: after a failover a
        // connection may still be open to the old primary, now read-only (a managed service's
        // DNS name moved, a proxy that does not cut sessions), or to a node outside the primary
        // component, and would fail every statement without ever breaking.
        .before_acquire(|_, meta| Box::pin(async move { Ok(!opened_before_distrust(meta.age)) }))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // READ COMMITTED takes no gap locks: fewer deadlocks between workers inserting
                // into the same tables. Every decision that needs a stable read locks its row.
                sqlx::query("set session transaction isolation level read committed").execute(&mut *conn).await?;
                // Fail a lock wait in seconds, not the default 50: it is retried either way.
                sqlx::query("set session innodb_lock_wait_timeout = ?").bind(lock_wait).execute(&mut *conn).await?;
                Ok(())
            })
        })
}

/// The process's clock for [`distrust_connections`]: milliseconds since its first use.
fn process_millis() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// When connections were last distrusted, in [`process_millis`]; 0 for never.
static DISTRUSTED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Marks every connection opened until now as not to be used again: the pools close them when
/// they would hand them out, and open new ones (through the proxy, or the DNS name, to wherever
/// the writable primary is now). Called when the database was found unavailable.
pub fn distrust_connections() {
    DISTRUSTED_AT.store(process_millis().max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Whether a connection of `age` was opened before the last [`distrust_connections`].
fn opened_before_distrust(age: Duration) -> bool {
    let opened = process_millis().saturating_sub(age.as_millis() as u64);
    opened < DISTRUSTED_AT.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a database error means for the message being processed.
///
/// A replicated MySQL adds failure modes of its own, all transient (docs/operations.md,
/// "Running on a replicated database"): a Galera certification failure or brute-force abort is
/// a deadlock (1213), at COMMIT or at the next statement, and Group Replication's is a rollback
/// at COMMIT (3101): both `Conflict`. A node that is not (yet) part of the primary component
/// answers `WSREP has not yet prepared node for application use` (1047) or fails its COMMIT
/// (1180); a former primary after a failover is `read_only` / `super_read_only` (1290, 1836); a
/// Group Replication member out of the majority fails its commit hook (3100): all `Unavailable`.
/// A connection lost during COMMIT (`Unavailable` too) leaves the outcome unknown: the batch runs
/// again, and the inbox (its primary key is the event id, written in the same transaction) makes
/// the second run skip what the first committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot be reached, went away, or cannot take writes right now (a node
    /// outside the primary component, a read-only former primary): wait for it, spend no
    /// attempt.
    Unavailable,
    /// Deadlock, certification failure or lock wait timeout: try again soon.
    Conflict,
    /// A unique key said no.
    Duplicate,
    /// Anything else: a bug or a bad statement.
    Other,
}

/// MySQL's "unknown command"; Galera's "WSREP has not yet prepared node for application use":
/// the node is joining, donating, or outside the primary component.
const ER_UNKNOWN_COM_ERROR: u16 = 1047;
const ER_DUP_ENTRY: u16 = 1062;
/// "Got error ... during COMMIT": Galera's commit on a node that just lost the primary component.
const ER_ERROR_DURING_COMMIT: u16 = 1180;
/// MySQL 8's `read_only` refusal in some statements (most say 1290).
const ER_READ_ONLY_MODE: u16 = 1836;
/// Group Replication: "Error on observer while running replication hook 'before_commit'" (the
/// member is not in the majority, or is leaving the group).
const ER_RUN_HOOK_ERROR: u16 = 3100;
/// Group Replication: "Plugin instructed the server to rollback the current transaction" (its
/// certification failed at COMMIT).
const ER_TRANSACTION_ROLLBACK_DURING_COMMIT: u16 = 3101;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_CON_COUNT: u16 = 1040;
const ER_SERVER_SHUTDOWN: u16 = 1053;
const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
const ER_CONNECTION_KILLED: u16 = 1927;
const ER_QUERY_INTERRUPTED: u16 = 1317;
const CR_CONNECTION_ERROR: u16 = 2002;
const CR_CONN_HOST_ERROR: u16 = 2003;
const CR_SERVER_GONE_ERROR: u16 = 2006;
const CR_SERVER_LOST: u16 = 2013;
const ER_CLIENT_INTERACTION_TIMEOUT: u16 = 4031;

pub fn classify(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Unavailable,
        sqlx::Error::Database(_) => error_number(error).map_or(Failure::Other, failure_of),
        _ => Failure::Other,
    }
}

/// The server's error number, for an error the server sent.
fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db.try_downcast_ref::<MySqlDatabaseError>().map(|e| e.number()),
        _ => None,
    }
}

/// What a server error number means (MySQL 8 and MariaDB share these numbers).
fn failure_of(number: u16) -> Failure {
    match number {
        ER_DUP_ENTRY => Failure::Duplicate,
        ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK | ER_TRANSACTION_ROLLBACK_DURING_COMMIT => Failure::Conflict,
        ER_UNKNOWN_COM_ERROR
        | ER_ERROR_DURING_COMMIT
        | ER_READ_ONLY_MODE
        | ER_RUN_HOOK_ERROR
        | ER_CON_COUNT
        | ER_SERVER_SHUTDOWN
        | ER_OPTION_PREVENTS_STATEMENT
        | ER_CONNECTION_KILLED
        | ER_QUERY_INTERRUPTED
        | CR_CONNECTION_ERROR
        | CR_CONN_HOST_ERROR
        | CR_SERVER_GONE_ERROR
        | CR_SERVER_LOST
        | ER_CLIENT_INTERACTION_TIMEOUT => Failure::Unavailable,
        _ => Failure::Other,
    }
}

/// Whether the error is a conflict that always has a winner: a deadlock (InnoDB picked this
/// transaction as the victim; Galera's certification failures and brute-force aborts say the
/// same) or Group Replication's certification rollback. Running it again makes progress, so it
/// is run again without spending an attempt; a lock wait timeout (a lock held for a long time by
/// someone) is not one.
pub fn always_resolves(error: &sqlx::Error) -> bool {
    error_number(error).is_some_and(resolves_by_itself)
}

fn resolves_by_itself(number: u16) -> bool {
    matches!(number, ER_LOCK_DEADLOCK | ER_TRANSACTION_ROLLBACK_DURING_COMMIT)
}

/// Attempts of a short statement through lock conflicts.
pub const CONFLICT_ATTEMPTS: u32 = 20;

/// Runs a short statement or transaction again while it loses lock conflicts (deadlock, lock
/// wait timeout), up to [`CONFLICT_ATTEMPTS`] times; any other outcome is returned.
pub async fn through_conflicts<T, F, Fut>(mut operation: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        match operation().await {
            Err(error) if classify(&error) == Failure::Conflict && attempt < CONFLICT_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(2 + u64::from(attempt) * 3)).await;
            }
            result => return result,
        }
    }
}

/// How rows read for a decision are locked until the transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Others may read and share-lock, nobody may change them (`lock in share mode`, the same
    /// spelling on MySQL 8 and MariaDB).
    Share,
    /// Nobody else may lock or change them.
    Update,
}

impl Lock {
    fn clause(self) -> &'static str {
        match self {
            Lock::Share => " lock in share mode",
            Lock::Update => " for update",
        }
    }
}

/// `select ... where <column> in (ids) <lock>`; nothing is sent for no ids.
pub(crate) async fn load_by_ids<T>(
    conn: &mut sqlx::MySqlConnection,
    select: &str,
    column: &str,
    ids: &[uuid::Uuid],
    lock: Lock,
) -> sqlx::Result<Vec<T>>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = sqlx::QueryBuilder::new(select);
    query.push(format!(" where {column} in ("));
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id.hyphenated());
    }
    query.push(")").push(lock.clause());
    query.build_query_as().fetch_all(conn).await
}

/// `column = case id when ? then ? ... end`: one column of a multi-row update.
pub(crate) fn push_case<T>(
    query: &mut sqlx::QueryBuilder<sqlx::MySql>,
    column: &str,
    rows: &[&T],
    id: impl Fn(&T) -> uuid::Uuid,
    mut value: impl FnMut(&mut sqlx::QueryBuilder<sqlx::MySql>, &T),
) {
    query.push(format!("{column} = case id"));
    for row in rows {
        query.push(" when ").push_bind(id(row).hyphenated()).push(" then ");
        value(query, row);
    }
    query.push(" end");
}

/// ` where id in (...)` for a multi-row update.
pub(crate) fn push_where_ids<T>(
    query: &mut sqlx::QueryBuilder<sqlx::MySql>,
    rows: &[&T],
    id: impl Fn(&T) -> uuid::Uuid,
) {
    query.push(" where id in (");
    let mut list = query.separated(", ");
    for row in rows {
        list.push_bind(id(row).hyphenated());
    }
    query.push(")");
}

/// Does the database answer?
pub async fn ping(pool: &MySqlPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicated_databases_failures_are_transient_never_a_bug() {
        // Galera: certification failure / brute-force abort (1213), a node not ready or outside
        // the primary component (1047), a commit on a node that lost it (1180); a former primary
        // (1290, 1836); Group Replication's certification rollback (3101) and commit hook (3100).
        for (number, expected) in [
            (1213, Failure::Conflict),
            (3101, Failure::Conflict),
            (1205, Failure::Conflict),
            (1047, Failure::Unavailable),
            (1180, Failure::Unavailable),
            (1290, Failure::Unavailable),
            (1836, Failure::Unavailable),
            (3100, Failure::Unavailable),
            (2013, Failure::Unavailable),
            (2006, Failure::Unavailable),
            (1927, Failure::Unavailable),
            (1062, Failure::Duplicate),
        ] {
            assert_eq!(failure_of(number), expected, "error {number}");
        }
        // A bad statement stays a bug.
        for number in [1064, 1146, 1054, 1406, 1366] {
            assert_eq!(failure_of(number), Failure::Other, "error {number}");
        }
        // Deadlocks and certification failures always have a winner; a lock wait may not end.
        assert!(resolves_by_itself(1213) && resolves_by_itself(3101));
        assert!(!resolves_by_itself(1205) && !resolves_by_itself(1047));
        assert!(!always_resolves(&sqlx::Error::PoolTimedOut));
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))),
            Failure::Unavailable
        );
    }

    #[test]
    fn statement_chunks_come_in_few_sizes_and_keep_every_row_in_order() {
        for len in [0usize, 1, 2, 3, 73, 100, 134, 250, 1000] {
            let rows: Vec<usize> = (0..len).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "{len} rows");
            assert!(chunks.iter().all(|c| c.len() == 100 || c.len().is_power_of_two()), "{len}: {chunks:?}");
        }
        assert_eq!(statement_chunks(&[0; 134]).map(<[_]>::len).collect::<Vec<_>>(), vec![100, 32, 2]);
    }
}
