//! Running worker instances: a heartbeat each, so the partitions of the `commands` queue are
//! shared out among the live ones. Times come from the instances' clocks, like every other
//! time this system writes.

use chrono::{Duration, Utc};
use sqlx::MySqlPool;
use uuid::Uuid;

/// Writes this instance's heartbeat (and registers it the first time).
pub async fn heartbeat(pool: &MySqlPool, id: Uuid, host: &str) -> sqlx::Result<()> {
    let now = Utc::now();
    sqlx::query(
        "insert into worker_instances (id, host, started_at, heartbeat_at) values (?, ?, ?, ?) \
         on duplicate key update heartbeat_at = ?",
    )
    .bind(id.hyphenated())
    .bind(host)
    .bind(now)
    .bind(now)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// The instances heard from within `live_ms`, sorted by id; long-silent rows are removed.
pub async fn live(pool: &MySqlPool, live_ms: u64) -> sqlx::Result<Vec<Uuid>> {
    let now = Utc::now();
    let window = Duration::milliseconds(live_ms as i64);
    sqlx::query("delete from worker_instances where heartbeat_at < ?").bind(now - window * 20).execute(pool).await?;
    let ids: Vec<String> = sqlx::query_scalar("select id from worker_instances where heartbeat_at >= ? order by id")
        .bind(now - window)
        .fetch_all(pool)
        .await?;
    Ok(ids.iter().filter_map(|id| Uuid::parse_str(id).ok()).collect())
}

/// Removes this instance (a clean stop): the others take its partitions at once.
pub async fn leave(pool: &MySqlPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from worker_instances where id = ?").bind(id.hyphenated()).execute(pool).await?;
    Ok(())
}
