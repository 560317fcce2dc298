//! The Galera drill (`make drill-galera`): a 3-node MariaDB Galera cluster of the test's own
//! behind a real HAProxy, with the worker on it under load. A node SIGKILLed and brought back
//! (IST, then SST), and two workers writing through two different nodes at once on the same
//! entities (certification conflicts on purpose). Each prints the usual tally and its recovery
//! times, and passes only with nothing lost, nothing applied twice, nothing dead-lettered and no
//! attempt spent. Not in `make test` (test binaries named `drill_*` are left out): each scenario
//! starts three database servers and a proxy.

#![expect(clippy::expect_used, reason = "test support: a failed set-up stops the test with its message")]

#[path = "../chaos/support.rs"]
#[allow(dead_code, reason = "the fault suite's helpers; the drill uses some of them")]
mod support;

mod conflicts;
mod failover;
mod failure_modes;

use std::time::Duration;

use automation_shared::testing::TestEnv;
use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

/// A fresh pool on the environment's database: after a failover the old pool's connections were
/// cut by the proxy, and each would fail its first statement.
pub async fn fresh_pool(env: &mut TestEnv) {
    let url = env.config.database.url.clone().expect("database url");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(pool) = MySqlPoolOptions::new().max_connections(4).connect(&url).await {
            env.pool = pool;
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the database did not take connections within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `sql` (a count) now, or `None` while the database cannot answer.
pub async fn count_now(pool: &MySqlPool, sql: &'static str) -> Option<i64> {
    tokio::time::timeout(Duration::from_secs(2), sqlx::query_scalar::<_, i64>(sql).fetch_one(pool))
        .await
        .ok()
        .and_then(Result::ok)
}
