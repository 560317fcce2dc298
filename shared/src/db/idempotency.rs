//! `idempotency_keys`: the event an Idempotency-Key stands for, and the fingerprint of the
//! request that first used it.

use sqlx::MySqlPool;

/// The event id for `key_hash`: the one stored, or `fresh` when this is the key's first use.
pub async fn claim(pool: &MySqlPool, key_hash: &str, fresh: &str) -> sqlx::Result<String> {
    sqlx::query(
        "insert into idempotency_keys (key_hash, event_id) values (?, ?) on duplicate key update key_hash = key_hash",
    )
    .bind(key_hash)
    .bind(fresh)
    .execute(pool)
    .await?;
    sqlx::query_scalar("select event_id from idempotency_keys where key_hash = ?").bind(key_hash).fetch_one(pool).await
}

/// Records the fingerprint of the event's body if none is yet; returns the one stored (`None`
/// when the event came from no key).
pub async fn fingerprint(pool: &MySqlPool, event_id: &str, body_hash: &str) -> sqlx::Result<Option<String>> {
    sqlx::query("update idempotency_keys set body_hash = ? where event_id = ? and body_hash is null")
        .bind(body_hash)
        .bind(event_id)
        .execute(pool)
        .await?;
    sqlx::query_scalar("select body_hash from idempotency_keys where event_id = ?")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .map(Option::flatten)
}
