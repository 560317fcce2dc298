//! The drill's load: CloudEvents through a region's API (`POST /api/v1/events`, counted when
//! answered 202) and a Spring-style publisher (plain Jackson JSON, `__TypeId__`, no message id)
//! to its events exchange with confirms (counted when confirmed). Every event is an
//! `audit.recorded` of entity `drill` with an entity id of its own, so each applied event is one
//! audit record, and one applied twice is two.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use automation_shared::messaging::{self, Names, Outgoing, Publisher};
use automation_shared::testing::spring_plain_properties;
use serde_json::json;
use tokio::sync::Mutex;

pub const ENTITY: &str = "drill";

/// What a load run got acknowledged: entity ids.
#[derive(Debug, Default, Clone)]
pub struct Acknowledged {
    pub sent: usize,
    pub ids: BTreeSet<String>,
}

/// Logs in as a service user on `base`; the bearer token.
pub async fn login(base: &str, email: &str, password: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login answers");
    assert_eq!(response.status(), 200, "login of {email}");
    let body: serde_json::Value = response.json().await.expect("json");
    body["accessToken"].as_str().expect("token").to_string()
}

/// One event through the API; whether it was answered 202.
pub async fn post_event(client: &reqwest::Client, base: &str, token: &str, entity_id: &str) -> bool {
    let event = json!({
        "specversion": "1.0", "id": entity_id, "source": "/drill", "type": "audit.recorded",
        "data": {"entity": ENTITY, "entityId": entity_id, "action": "hit"}
    });
    client
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(token)
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 202)
}

/// HTTP load with `concurrency` clients until `stop`; ids `"{tag}-{n}"`.
pub async fn http(
    base: String,
    token: String,
    tag: &'static str,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> Acknowledged {
    let result = Arc::new(Mutex::new(Acknowledged::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (base, token, stop, result, next) =
            (base.clone(), token.clone(), stop.clone(), result.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{tag}-{}", next.fetch_add(1, Ordering::Relaxed));
                let accepted = post_event(&client, &base, &token, &id).await;
                let mut result = result.lock().await;
                result.sent += 1;
                if accepted {
                    result.ids.insert(id);
                } else {
                    drop(result);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    result.lock().await.clone()
}

/// `count` HTTP events, one after another; the accepted ones.
pub async fn http_burst(base: &str, token: &str, tag: &str, count: usize) -> Acknowledged {
    let client = reqwest::Client::new();
    let mut result = Acknowledged::default();
    for n in 0..count {
        let id = format!("{tag}-{n}");
        result.sent += 1;
        if post_event(&client, base, token, &id).await {
            result.ids.insert(id);
        }
    }
    result
}

/// A Spring `RabbitTemplate` with publisher confirms, in batches of 20, until `stop` (or until its
/// broker is gone); ids `"{tag}-{n}"`. A batch counts only if every confirm of it came.
pub async fn spring(amqp: String, tag: &'static str, stop: Arc<AtomicBool>) -> Acknowledged {
    let mut result = Acknowledged::default();
    let Ok(addresses) = messaging::Addresses::parse(&amqp) else {
        return result;
    };
    let Ok(connection) = messaging::connect_once(&addresses, "drill spring publisher").await else {
        return result;
    };
    let connection = Arc::new(connection);
    let Ok(publisher) = Publisher::new(connection.clone(), Duration::from_secs(5)).await else {
        return result;
    };
    let exchange = Names::new(crate::region::PREFIX).events();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let batch: Vec<(String, Vec<u8>)> = (n..n + 20)
            .map(|i| {
                let id = format!("{tag}-{i}");
                let body = json!({"entity": ENTITY, "entityId": id, "action": "hit"}).to_string().into_bytes();
                (id, body)
            })
            .collect();
        n += 20;
        result.sent += batch.len();
        let messages = batch
            .iter()
            .map(|(_, body)| Outgoing {
                exchange: &exchange,
                routing_key: "audit.recorded",
                body,
                properties: spring_plain_properties(),
                mandatory: false,
            })
            .collect();
        match publisher.publish_all(messages).await {
            Ok(()) => result.ids.extend(batch.into_iter().map(|(id, _)| id)),
            Err(_) if !connection.status().connected() => break,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = connection.close(200, "done".into()).await;
    result
}

/// The entity ids applied in a region's database, and how many audit records they have.
pub async fn applied(pool: &sqlx::MySqlPool) -> (BTreeSet<String>, usize) {
    let ids: Vec<String> = sqlx::query_scalar("select entity_id from audit_log where entity = ?")
        .bind(ENTITY)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let records = ids.len();
    (ids.into_iter().collect(), records)
}

/// Waits until every id of `expected` is applied in `pool`, or nothing changed for `quiet`, or
/// `timeout`; the last counts.
pub async fn wait_applied(
    pool: &sqlx::MySqlPool,
    expected: &BTreeSet<String>,
    quiet: Duration,
    timeout: Duration,
) -> (BTreeSet<String>, usize) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = (BTreeSet::new(), 0);
    let mut changed = tokio::time::Instant::now();
    loop {
        let now = applied(pool).await;
        if now.1 != last.1 {
            changed = tokio::time::Instant::now();
        }
        last = now;
        let done = expected.iter().all(|id| last.0.contains(id));
        if done || changed.elapsed() >= quiet || tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
