//! Who may still use a token they hold: a user deactivated, deleted or given another role is
//! refused within [`REFRESH`] of the change. The API keeps a snapshot of the users' state in
//! memory and refreshes it in the background, so the check costs no query per request.
//!
//! A token names a user the snapshot may not know: one issued elsewhere (an RS256 issuer) for a
//! user kept elsewhere. Such tokens are taken as before; what the snapshot does know is enforced:
//! `active = false`, a role other than the token's, and a user this process saw that is gone. (A
//! process that never saw a user cannot tell "deleted" from "kept elsewhere": deactivate users
//! rather than delete them, which every process enforces.)

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::MySqlPool;

use super::Role;

/// How often the snapshot is compared with the users table (one small query; the table itself is
/// read only when it changed).
pub const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Sessions {
    snapshot: RwLock<Snapshot>,
}

#[derive(Debug, Default)]
struct Snapshot {
    /// Count and checksum of the users table when it was read.
    fingerprint: Option<(i64, u64)>,
    /// Id → role (`None`: a role this version does not know) and whether active.
    users: HashMap<String, (Option<Role>, bool)>,
    /// Users seen in an earlier snapshot that are no longer there.
    gone: HashSet<String>,
}

impl Sessions {
    /// Why a token of `user` with `role` is no longer good, if it is not.
    pub fn refusal(&self, user: &str, role: Role) -> Option<&'static str> {
        let snapshot = self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if snapshot.gone.contains(user) {
            return Some("the user of this token no longer exists");
        }
        match snapshot.users.get(user) {
            Some((_, false)) => Some("the user of this token was deactivated"),
            Some((current, true)) if *current != Some(role) => Some("the role of this user changed; log in again"),
            _ => None,
        }
    }

    /// Reads the users table again if it changed since the last read.
    pub async fn refresh(&self, pool: &MySqlPool) -> sqlx::Result<()> {
        let fingerprint: (i64, u64) = sqlx::query_as(
            "select count(*), cast(coalesce(bit_xor(crc32(concat(id, ':', role, ':', active))), 0) as unsigned) from users",
        )
        .fetch_one(pool)
        .await?;
        if self.snapshot.read().unwrap_or_else(std::sync::PoisonError::into_inner).fingerprint == Some(fingerprint) {
            return Ok(());
        }
        let rows: Vec<(String, String, bool)> =
            sqlx::query_as("select id, role, active from users").fetch_all(pool).await?;
        let users: HashMap<String, (Option<Role>, bool)> =
            rows.into_iter().map(|(id, role, active)| (id, (Role::from_str(&role).ok(), active))).collect();
        let mut snapshot = self.snapshot.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut gone: HashSet<String> = snapshot.gone.iter().filter(|id| !users.contains_key(*id)).cloned().collect();
        gone.extend(snapshot.users.keys().filter(|id| !users.contains_key(*id)).cloned());
        *snapshot = Snapshot { fingerprint: Some(fingerprint), users, gone };
        Ok(())
    }

    /// Refreshes every [`REFRESH`] for as long as the sessions are in use.
    pub fn keep_fresh(self: &Arc<Self>, pool: MySqlPool) {
        super::keep_fresh(self, REFRESH, "the users' state", "keeping the last one", move |sessions| {
            let pool = pool.clone();
            async move { sessions.refresh(&pool).await }
        });
    }
}
