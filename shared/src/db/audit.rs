//! The audit log (CONTRACT §9): append-only records in hash chains, periodic seals, and the
//! verification behind `automation-worker audit verify`.
//!
//! Each writer (a consumer, an API process) appends to a chain of its own: a record's hash covers
//! its content and the previous record's hash in that chain. No writer ever waits for another, so
//! the audit insert is never a global bottleneck. A chain is abandoned, never repaired: after any
//! failed write the writer starts a new chain, so it cannot link to a record that was rolled back.
//! Seals pin the heads of recently written chains in a chain of their own, so removing the newest
//! records of a chain is noticed as well.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use sqlx::{FromRow, MySqlConnection, MySqlExecutor, MySqlPool, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// The previous hash of the first record of every chain, and of the first seal.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorType {
    User,
    Service,
    Rule,
    System,
}

impl ActorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorType::User => "user",
            ActorType::Service => "service",
            ActorType::Rule => "rule",
            ActorType::System => "system",
        }
    }

    pub fn parse(s: &str) -> ActorType {
        match s {
            "user" => ActorType::User,
            "rule" => ActorType::Rule,
            "system" => ActorType::System,
            _ => ActorType::Service,
        }
    }
}

/// A record about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    pub actor_id: Option<String>,
    pub actor_type: ActorType,
    pub event_id: Option<String>,
    pub correlation_id: Option<String>,
    pub details: Option<Value>,
}

/// A record as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    #[serde(skip)]
    pub seq: u64,
    #[sqlx(try_from = "Hyphenated")]
    pub id: Uuid,
    pub entity: String,
    pub entity_id: String,
    pub action: String,
    pub actor_id: Option<String>,
    pub actor_type: String,
    pub event_id: Option<String>,
    pub correlation_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub details: Option<Json<Value>>,
    pub created_at: DateTime<Utc>,
}

macro_rules! select_audit {
    ($rest:literal) => {
        concat!(
            "select seq, id, entity, entity_id, action, actor_id, actor_type, event_id, correlation_id, details, created_at \
             from audit_log ",
            $rest
        )
    };
}
/// The select list with `from`, for queries that add their own filters.
pub const SELECT: &str = select_audit!("");

/// Records about one event, oldest first.
pub async fn for_event<'e>(executor: impl MySqlExecutor<'e>, event_id: &str) -> sqlx::Result<Vec<AuditRecord>> {
    sqlx::query_as(select_audit!("where event_id = ? order by seq")).bind(event_id).fetch_all(executor).await
}

/// JSON with object keys sorted at every level: the same value always gives the same bytes,
/// whatever order it was built or stored in.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let ordered: BTreeMap<&String, Value> = map.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect::<Map<_, _>>())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The chain hash: SHA-256, or HMAC-SHA-256 when an audit key is configured.
fn chain_hash(key: Option<&[u8]>, prev_hash: &str, content: &str) -> String {
    match key {
        Some(key) => {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
                // HMAC takes a key of any length; this branch is unreachable.
                return String::new();
            };
            mac.update(prev_hash.as_bytes());
            mac.update(b"\n");
            mac.update(content.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        None => {
            let mut digest = Sha256::new();
            digest.update(prev_hash.as_bytes());
            digest.update(b"\n");
            digest.update(content.as_bytes());
            hex(&digest.finalize())
        }
    }
}

/// Everything a record's hash covers, in a fixed order.
#[expect(clippy::too_many_arguments, reason = "the fields of one row, in column order")]
fn record_content(
    id: &str,
    entity: &str,
    entity_id: &str,
    action: &str,
    actor_id: Option<&str>,
    actor_type: &str,
    event_id: Option<&str>,
    correlation_id: Option<&str>,
    details: Option<&str>,
    created_at: DateTime<Utc>,
    chain_id: &str,
    chain_seq: u64,
) -> String {
    json!([
        id,
        entity,
        entity_id,
        action,
        actor_id,
        actor_type,
        event_id,
        correlation_id,
        details,
        created_at.timestamp_micros(),
        chain_id,
        chain_seq
    ])
    .to_string()
}

/// One writer's chain. Stage records against it, write them in a transaction, then
/// [`AuditChain::advance`] after commit (or [`AuditChain::abandon`] after a failure).
#[derive(Debug, Clone)]
pub struct AuditChain {
    id: Uuid,
    next_seq: u64,
    last_hash: String,
    key: Option<Vec<u8>>,
}

impl AuditChain {
    pub fn new(key: Option<&str>) -> AuditChain {
        AuditChain {
            id: Uuid::now_v7(),
            next_seq: 1,
            last_hash: GENESIS.into(),
            key: key.map(|k| k.as_bytes().to_vec()),
        }
    }

    /// Starts a set of records that follow the chain's committed head.
    pub fn stage(&self) -> Staged {
        Staged {
            chain_id: self.id,
            next_seq: self.next_seq,
            last_hash: self.last_hash.clone(),
            key: self.key.clone(),
            rows: Vec::new(),
        }
    }

    /// The staged records were committed: they are the chain's new head.
    pub fn advance(&mut self, staged: &Staged) {
        if staged.chain_id == self.id && !staged.rows.is_empty() {
            self.next_seq = staged.next_seq;
            self.last_hash = staged.last_hash.clone();
        }
    }

    /// Whether the staged records committed is unknown (or they did not): start a new chain
    /// rather than risk linking to a record that does not exist.
    pub fn abandon(&mut self) {
        *self = AuditChain::new(None).with_key(self.key.take());
    }

    fn with_key(mut self, key: Option<Vec<u8>>) -> AuditChain {
        self.key = key;
        self
    }
}

#[derive(Debug, Clone)]
struct StagedRow {
    id: Uuid,
    record: NewRecord,
    details: Option<String>,
    created_at: DateTime<Utc>,
    chain_seq: u64,
    prev_hash: String,
    hash: String,
}

/// Records staged for one transaction.
#[derive(Debug, Clone)]
pub struct Staged {
    chain_id: Uuid,
    next_seq: u64,
    last_hash: String,
    key: Option<Vec<u8>>,
    rows: Vec<StagedRow>,
}

impl Staged {
    /// Adds a record; returns its id.
    pub fn push(&mut self, record: NewRecord) -> Uuid {
        let id = Uuid::now_v7();
        // The column keeps microseconds: hash exactly what will be read back.
        let now = Utc::now();
        let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let details = record.details.as_ref().map(canonical_json);
        let chain_id = self.chain_id.to_string();
        let content = record_content(
            &id.to_string(),
            &record.entity,
            &record.entity_id,
            &record.action,
            record.actor_id.as_deref(),
            record.actor_type.as_str(),
            record.event_id.as_deref(),
            record.correlation_id.as_deref(),
            details.as_deref(),
            created_at,
            &chain_id,
            self.next_seq,
        );
        let hash = chain_hash(self.key.as_deref(), &self.last_hash, &content);
        self.rows.push(StagedRow {
            id,
            record,
            details,
            created_at,
            chain_seq: self.next_seq,
            prev_hash: std::mem::replace(&mut self.last_hash, hash.clone()),
            hash,
        });
        self.next_seq += 1;
        id
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Inserts the staged records with multi-row statements.
    pub async fn write(&self, conn: &mut MySqlConnection) -> sqlx::Result<()> {
        for chunk in super::statement_chunks(&self.rows) {
            let mut insert = QueryBuilder::new(
                "insert into audit_log (id, entity, entity_id, action, actor_id, actor_type, event_id, correlation_id, \
                 details, created_at, chain_id, chain_seq, prev_hash, hash) ",
            );
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(r.id.hyphenated())
                    .push_bind(r.record.entity.clone())
                    .push_bind(r.record.entity_id.clone())
                    .push_bind(r.record.action.clone())
                    .push_bind(r.record.actor_id.clone())
                    .push_bind(r.record.actor_type.as_str())
                    .push_bind(r.record.event_id.clone())
                    .push_bind(r.record.correlation_id.clone())
                    .push_bind(r.details.clone())
                    .push_bind(r.created_at)
                    .push_bind(self.chain_id.hyphenated())
                    .push_bind(r.chain_seq)
                    .push_bind(r.prev_hash.clone())
                    .push_bind(r.hash.clone());
            });
            insert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub records: u64,
    pub chains: u64,
    pub seals: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(FromRow)]
struct ChainRow {
    id: String,
    entity: String,
    entity_id: String,
    action: String,
    actor_id: Option<String>,
    actor_type: String,
    event_id: Option<String>,
    correlation_id: Option<String>,
    details: Option<String>,
    created_at: DateTime<Utc>,
    chain_id: String,
    chain_seq: u64,
    prev_hash: String,
    hash: String,
}

#[derive(FromRow)]
struct SealRow {
    seq: u64,
    sealed_at: DateTime<Utc>,
    heads: String,
    prev_hash: String,
    hash: String,
}

fn seal_content(sealed_at: DateTime<Utc>, heads: &str) -> String {
    json!([sealed_at.timestamp_micros(), heads]).to_string()
}

/// Walks every chain and every seal. `progress` is called every 10,000 records.
pub async fn verify(pool: &MySqlPool, key: Option<&str>, mut progress: impl FnMut(u64)) -> sqlx::Result<VerifyReport> {
    let key = key.map(str::as_bytes);
    let mut report = VerifyReport::default();

    // Seals first: they say which chain heads must still be there.
    let seals: Vec<SealRow> =
        sqlx::query_as("select seq, sealed_at, heads, prev_hash, hash from audit_seals order by seq")
            .fetch_all(pool)
            .await?;
    let mut expected_heads: HashMap<(String, u64), (String, u64)> = HashMap::new();
    let mut previous = GENESIS.to_string();
    for seal in &seals {
        report.seals += 1;
        if seal.prev_hash != previous {
            report
                .problems
                .push(format!("seal {}: does not follow the seal before it (a seal was removed or changed)", seal.seq));
        }
        if chain_hash(key, &seal.prev_hash, &seal_content(seal.sealed_at, &seal.heads)) != seal.hash {
            report.problems.push(format!("seal {}: its content does not match its hash", seal.seq));
        }
        previous = seal.hash.clone();
        match serde_json::from_str::<BTreeMap<String, (u64, String)>>(&seal.heads) {
            Ok(heads) => {
                for (chain, (seq, hash)) in heads {
                    expected_heads.insert((chain, seq), (hash, seal.seq));
                }
            }
            Err(_) => report.problems.push(format!("seal {}: its heads are not readable", seal.seq)),
        }
    }

    let mut rows = sqlx::query_as::<_, ChainRow>(
        "select id, entity, entity_id, action, actor_id, actor_type, event_id, correlation_id, details, created_at, \
         chain_id, chain_seq, prev_hash, hash from audit_log order by chain_id, chain_seq",
    )
    .fetch(pool);
    let mut current_chain: Option<(String, u64, String)> = None;
    while let Some(row) = rows.try_next().await? {
        report.records += 1;
        if report.records.is_multiple_of(10_000) {
            progress(report.records);
        }
        let (expected_seq, expected_prev) = match &current_chain {
            Some((chain, seq, hash)) if *chain == row.chain_id => (seq + 1, hash.clone()),
            _ => {
                report.chains += 1;
                (1, GENESIS.to_string())
            }
        };
        if row.chain_seq != expected_seq {
            report.problems.push(format!(
                "chain {}: record {} follows record {} (records {}..{} were removed)",
                row.chain_id,
                row.chain_seq,
                expected_seq - 1,
                expected_seq,
                row.chain_seq - 1
            ));
        } else if row.prev_hash != expected_prev {
            report.problems.push(format!(
                "chain {} record {}: does not link to the record before it",
                row.chain_id, row.chain_seq
            ));
        }
        let content = record_content(
            &row.id,
            &row.entity,
            &row.entity_id,
            &row.action,
            row.actor_id.as_deref(),
            &row.actor_type,
            row.event_id.as_deref(),
            row.correlation_id.as_deref(),
            row.details.as_deref(),
            row.created_at,
            &row.chain_id,
            row.chain_seq,
        );
        if chain_hash(key, &row.prev_hash, &content) != row.hash {
            report.problems.push(format!(
                "chain {} record {} (audit id {}): content was changed",
                row.chain_id, row.chain_seq, row.id
            ));
        }
        if let Some((hash, seal)) = expected_heads.remove(&(row.chain_id.clone(), row.chain_seq))
            && hash != row.hash
        {
            report.problems.push(format!(
                "chain {} record {}: differs from what seal {seal} recorded",
                row.chain_id, row.chain_seq
            ));
        }
        current_chain = Some((row.chain_id, row.chain_seq, row.hash));
    }
    let mut missing: Vec<_> = expected_heads.into_iter().collect();
    missing.sort();
    for ((chain, seq), (_, seal)) in missing {
        report.problems.push(format!("chain {chain} record {seq}: sealed by seal {seal} but no longer present"));
    }
    Ok(report)
}

/// Seals the heads of chains written to since the last seal (with a margin for transactions
/// still open then). Only one process seals at a time (a named lock; on a multi-primary cluster,
/// where that lock is per node, the unique predecessor of each seal); returns the new seal's
/// number, or `None` when there was nothing new or another process held the lock.
pub async fn seal(pool: &MySqlPool, key: Option<&str>) -> sqlx::Result<Option<u64>> {
    const LOCK: &str = "automation-engine.audit.seal";
    let mut conn = pool.acquire().await?;
    let locked: Option<i64> = sqlx::query_scalar("select get_lock(?, 0)").bind(LOCK).fetch_one(&mut *conn).await?;
    if locked != Some(1) {
        return Ok(None);
    }
    let result = seal_locked(&mut conn, key.map(str::as_bytes)).await;
    let _ = sqlx::query("select release_lock(?)").bind(LOCK).execute(&mut *conn).await;
    match result {
        // Another process sealed the same predecessor at once (the named lock is local to one
        // node of a multi-primary cluster): its seal stands, this one is not needed.
        Err(error) if super::classify(&error) == super::Failure::Duplicate => Ok(None),
        result => result,
    }
}

async fn seal_locked(conn: &mut MySqlConnection, key: Option<&[u8]>) -> sqlx::Result<Option<u64>> {
    let last: Option<(DateTime<Utc>, String, String)> =
        sqlx::query_as("select sealed_at, hash, heads from audit_seals order by seq desc limit 1")
            .fetch_optional(&mut *conn)
            .await?;
    let since = last.as_ref().map_or(DateTime::<Utc>::UNIX_EPOCH, |(at, _, _)| *at - chrono::Duration::minutes(10));
    let heads: Vec<(String, u64, String)> = sqlx::query_as(
        "select a.chain_id, a.chain_seq, a.hash from audit_log a \
         join (select chain_id, max(chain_seq) as head from audit_log where created_at >= ? group by chain_id) h \
         on a.chain_id = h.chain_id and a.chain_seq = h.head",
    )
    .bind(since.naive_utc())
    .fetch_all(&mut *conn)
    .await?;
    let heads: BTreeMap<String, (u64, String)> = heads.into_iter().map(|(c, s, h)| (c, (s, h))).collect();
    let heads_json = serde_json::to_string(&heads).unwrap_or_default();
    if heads.is_empty() || last.as_ref().is_some_and(|(_, _, previous)| *previous == heads_json) {
        return Ok(None);
    }
    let prev_hash = last.map_or_else(|| GENESIS.to_string(), |(_, hash, _)| hash);
    let now = Utc::now();
    let sealed_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let hash = chain_hash(key, &prev_hash, &seal_content(sealed_at, &heads_json));
    let result = sqlx::query("insert into audit_seals (sealed_at, heads, prev_hash, hash) values (?, ?, ?, ?)")
        .bind(sealed_at)
        .bind(&heads_json)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
    Ok(Some(result.last_insert_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":null}}"#).expect("json");
        assert_eq!(canonical_json(&a), r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn staged_records_link_to_each_other_and_to_the_committed_head() {
        let mut chain = AuditChain::new(None);
        let record = NewRecord {
            entity: "approval".into(),
            entity_id: "1".into(),
            action: "approval.approved".into(),
            actor_id: None,
            actor_type: ActorType::User,
            event_id: None,
            correlation_id: None,
            details: Some(json!({"b": 1, "a": 2})),
        };
        let mut first = chain.stage();
        first.push(record.clone());
        first.push(record.clone());
        assert_eq!(first.rows[0].prev_hash, GENESIS);
        assert_eq!(first.rows[1].prev_hash, first.rows[0].hash);
        chain.advance(&first);
        let mut second = chain.stage();
        second.push(record);
        assert_eq!(second.rows[0].chain_seq, 3);
        assert_eq!(second.rows[0].prev_hash, first.rows[1].hash);
        chain.abandon();
        assert_eq!(chain.stage().next_seq, 1);
    }

    #[test]
    fn a_keyed_hash_differs_from_an_unkeyed_one() {
        assert_ne!(chain_hash(None, GENESIS, "x"), chain_hash(Some(b"k"), GENESIS, "x"));
        assert_eq!(chain_hash(Some(b"k"), GENESIS, "x").len(), 64);
    }
}
