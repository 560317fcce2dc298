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

/// What a database error means for the message being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot be reached or went away: wait for it, spend no attempt.
    Unavailable,
    /// Deadlock or lock wait timeout: try again soon.
    Conflict,
    /// A unique key said no.
    Duplicate,
    /// Anything else: a bug or a bad statement.
    Other,
}

const ER_DUP_ENTRY: u16 = 1062;
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
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>().map(|e| e.number()) {
            Some(ER_DUP_ENTRY) => Failure::Duplicate,
            Some(ER_LOCK_WAIT_TIMEOUT | ER_LOCK_DEADLOCK) => Failure::Conflict,
            Some(
                ER_CON_COUNT
                | ER_SERVER_SHUTDOWN
                | ER_OPTION_PREVENTS_STATEMENT
                | ER_CONNECTION_KILLED
                | ER_QUERY_INTERRUPTED
                | CR_CONNECTION_ERROR
                | CR_CONN_HOST_ERROR
                | CR_SERVER_GONE_ERROR
                | CR_SERVER_LOST
                | ER_CLIENT_INTERACTION_TIMEOUT,
            ) => Failure::Unavailable,
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
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
