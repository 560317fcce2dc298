//! Which tokens were logged out, without a query per request: the API keeps the revoked `jti`s in
//! memory, loads them at start-up and reads the rows revoked since its last read every
//! [`REFRESH`]. A logout here is in the set at once; one on another replica is seen here within
//! `REFRESH` plus one read (docs/operations.md, "Tokens, keys and advisories": within 2 s).
//!
//! When the table cannot be read, what is known stays known: a token in the set is refused
//! whatever happens. A token not in the set is taken only while the set is fresh (read within
//! [`STALE_AFTER`]); past that, or before the first read, the request is answered 503, as it was
//! when every request read the table. So no replica takes a logged-out token more than
//! `STALE_AFTER` after the logout, whatever fails.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use sqlx::MySqlPool;

/// How often the rows revoked since the last read are read (one indexed query on
/// `revoked_tokens.revoked_at`).
pub const REFRESH: Duration = Duration::from_secs(1);
/// How old the set may be before tokens it does not list are no longer taken.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Each read starts this long before the database's clock at the previous one: a logout whose
/// insert began before that read but committed after it is still found.
const OVERLAP_SECS: u32 = 30;
/// Now and then the whole table is read again (merged, never replacing): a step of the database
/// server's clock cannot hide a row for longer than this.
const FULL_READ: Duration = Duration::from_secs(600);
/// A revocation is kept this long past its token's expiry (the verifier's leeway is 5 s).
const KEEP_PAST_EXPIRY_SECS: i64 = 60;
/// What failing reads mean for requests, as the log says it.
const MEANWHILE: &str =
    "tokens known revoked stay refused; other tokens are answered 503 once the list is 5 s old (STALE_AFTER)";
/// After a failed read, requests do not try again themselves before this.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Revocations {
    state: RwLock<State>,
    /// One read at a time: the background refresh, or a request that found the set stale.
    reading: tokio::sync::Mutex<Attempts>,
}

#[derive(Debug, Default)]
struct State {
    /// Revoked `jti` → its token's expiry (Unix seconds).
    revoked: HashMap<String, i64>,
    /// The database's clock when the last read started: the next one reads from here, less
    /// [`OVERLAP_SECS`].
    since: Option<NaiveDateTime>,
    /// When the last successful read started, on this process's clock.
    read_at: Option<Instant>,
    /// When the whole table was last read.
    full_read_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Attempts {
    last_failure: Option<Instant>,
}

/// The revocations could not be read recently enough to take a token they do not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unknown;

impl Revocations {
    /// Whether `jti` was logged out, from the set alone: `None` when it is not listed and the set
    /// is not fresh enough to say it was not.
    pub fn lookup(&self, jti: &str) -> Option<bool> {
        let state = self.read_state();
        if state.revoked.contains_key(jti) {
            return Some(true);
        }
        state.read_at.filter(|at| at.elapsed() <= STALE_AFTER).map(|_| false)
    }

    /// Whether `jti` was logged out. Reads the table only when the set is stale (before the
    /// first read, or while the database is away), one request at a time.
    pub async fn is_revoked(&self, jti: &str, pool: &MySqlPool) -> Result<bool, Unknown> {
        if let Some(known) = self.lookup(jti) {
            return Ok(known);
        }
        let mut attempts = self.reading.lock().await;
        // Another request (or the refresh) may have read it while this one waited.
        if let Some(known) = self.lookup(jti) {
            return Ok(known);
        }
        if attempts.last_failure.is_some_and(|at| at.elapsed() < RETRY_PAUSE) {
            return Err(Unknown);
        }
        match self.read(pool).await {
            Ok(()) => attempts.last_failure = None,
            Err(error) => {
                tracing::debug!(%error, "could not read the revoked tokens");
                attempts.last_failure = Some(Instant::now());
            }
        }
        self.lookup(jti).ok_or(Unknown)
    }

    /// Adds a logout this process made (after its row was written): refused here at once.
    pub fn revoke(&self, jti: &str, expires_at: i64) {
        self.write_state().revoked.insert(jti.to_string(), expires_at);
    }

    /// Reads the rows revoked since the last read (all of them at the first read and every
    /// [`FULL_READ`]), and forgets revocations of tokens expired anyway.
    pub async fn refresh(&self, pool: &MySqlPool) -> sqlx::Result<()> {
        let mut attempts = self.reading.lock().await;
        let read = self.read(pool).await;
        attempts.last_failure = read.as_ref().err().map(|_| Instant::now());
        read
    }

    /// Called with `reading` held.
    async fn read(&self, pool: &MySqlPool) -> sqlx::Result<()> {
        let started = Instant::now();
        let since = {
            let state = self.read_state();
            state.since.filter(|_| state.full_read_at.is_some_and(|at| at.elapsed() < FULL_READ))
        };
        let mut conn = pool.acquire().await?;
        let now: NaiveDateTime = sqlx::query_scalar("select now(6)").fetch_one(&mut *conn).await?;
        let rows: Vec<(String, NaiveDateTime)> = match since {
            Some(since) => {
                sqlx::query_as("select jti, expires_at from revoked_tokens where revoked_at >= ? - interval ? second")
                    .bind(since)
                    .bind(OVERLAP_SECS)
                    .fetch_all(&mut *conn)
                    .await?
            }
            None => {
                sqlx::query_as("select jti, expires_at from revoked_tokens where expires_at >= ? - interval ? second")
                    .bind(chrono::Utc::now().naive_utc())
                    .bind(KEEP_PAST_EXPIRY_SECS)
                    .fetch_all(&mut *conn)
                    .await?
            }
        };
        drop(conn);
        let expired_before = chrono::Utc::now().timestamp() - KEEP_PAST_EXPIRY_SECS;
        let mut state = self.write_state();
        // Merged, never replaced: a logout of this process added meanwhile stays.
        state.revoked.extend(rows.into_iter().map(|(jti, expires_at)| (jti, expires_at.and_utc().timestamp())));
        state.revoked.retain(|_, expires_at| *expires_at >= expired_before);
        state.since = Some(now);
        state.read_at = Some(started);
        if since.is_none() {
            state.full_read_at = Some(started);
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH`] for as long as the revocations are in use. While reads fail,
    /// tokens known revoked stay refused and other tokens are answered 503 once the list is older
    /// than [`STALE_AFTER`].
    pub fn keep_fresh(self: &Arc<Self>, pool: MySqlPool) {
        super::keep_fresh(self, REFRESH, "the revoked tokens", MEANWHILE, move |revocations| {
            let pool = pool.clone();
            async move { revocations.refresh(&pool).await }
        });
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    fn mark_read(&self, at: Instant) {
        self.write_state().read_at = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_the_first_read_only_known_revocations_are_answered() {
        let revocations = Revocations::default();
        assert_eq!(revocations.lookup("a"), None, "nothing read yet: unknown, not good");
        revocations.revoke("a", i64::MAX);
        assert_eq!(revocations.lookup("a"), Some(true), "a logout of this process counts at once");
    }

    #[test]
    fn a_stale_set_still_refuses_what_it_knows_and_takes_nothing_else() {
        let revocations = Revocations::default();
        revocations.revoke("a", i64::MAX);
        revocations.mark_read(Instant::now());
        assert_eq!(revocations.lookup("b"), Some(false));
        if let Some(long_ago) = Instant::now().checked_sub(STALE_AFTER + Duration::from_secs(1)) {
            revocations.mark_read(long_ago);
            assert_eq!(revocations.lookup("b"), None);
            assert_eq!(revocations.lookup("a"), Some(true));
        }
    }
}
