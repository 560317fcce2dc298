//! The worker's side of MySQL: its pool, and how a part of the worker waits out an outage
//! (readiness reports the database down meanwhile).

use std::sync::Arc;
use std::time::Duration;

use automation_shared::config::DatabaseConfig;
use automation_shared::db;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The pool and the probe flag its outages set. Cheap to clone: each task takes its own.
#[derive(Debug, Clone)]
pub struct Database {
    pub pool: MySqlPool,
    health: Arc<Health>,
}

impl Database {
    /// Connects lazily: MySQL may be down when the worker starts.
    pub fn lazy(config: &DatabaseConfig, health: Arc<Health>) -> anyhow::Result<Database> {
        Ok(Database { pool: db::lazy_pool(config)?, health })
    }

    /// Waits until MySQL answers; readiness reports it down meanwhile. `false` if `stop` came
    /// first.
    pub async fn wait_until_up(&self, stop: &CancellationToken) -> bool {
        self.health.set_database_down(true);
        // The connections held now may lead to a node that will not take writes again (a
        // read-only former primary, a node outside the primary component): open new ones.
        db::distrust_connections();
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            if db::ping(&self.pool).await.is_ok() {
                self.health.set_database_down(false);
                tracing::info!("MySQL answers again; resuming");
                return true;
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs a database operation through outages (waiting, spending nothing) and lock conflicts
    /// (run again a few times). `None` when shutdown came while the database was away.
    pub async fn through_outages<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        mut operation: F,
    ) -> Option<sqlx::Result<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = sqlx::Result<T>>,
    {
        loop {
            match db::through_conflicts(&mut operation).await {
                Err(error) if db::classify(&error) == db::Failure::Unavailable => {
                    tracing::warn!(%error, "MySQL is unavailable; waiting for it");
                    if !self.wait_until_up(stop).await {
                        return None;
                    }
                }
                result => return Some(result),
            }
        }
    }
}
