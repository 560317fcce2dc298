//! The dead-letter store's intake: everything that reaches the dead-letter exchange is kept
//! whole in MySQL, whether this worker dead-lettered it (with its reason and history in
//! headers) or the broker did (a message redelivered past the delivery limit).

use automation_shared::db::dead_letters::{self, MAX_STORED_BODY, NewDeadLetter};
use automation_shared::db::{self, Failure};
use automation_shared::events::envelope::{Limits, amqp_string};
use automation_shared::events::{Envelope, ID_NAMESPACE, derived_id};
use automation_shared::messaging::{Origin, SystemUsers, header, int_header};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::Broker;
use crate::database::Database;
use crate::failures::{self, headers};
use crate::pack;

/// Consumes the dead-letter queue of `broker` into `database` until `stop`.
pub async fn run(database: Database, broker: Broker, stop: CancellationToken) -> anyhow::Result<()> {
    let channel = broker.connection.create_channel().await?;
    channel.basic_qos(50, BasicQosOptions::default()).await?;
    let tag = format!("automation-worker.dead-letters.{}", Uuid::new_v4().simple());
    let mut consumer = channel
        .basic_consume(
            broker.names.dead_letter_queue().into(),
            tag.clone().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut cancelled = false;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled(), if !cancelled => {
                cancelled = true;
                let _ = channel.basic_cancel(tag.clone().into(), BasicCancelOptions::default()).await;
                continue;
            }
            next = consumer.next() => next,
        };
        match next {
            None => break,
            Some(Ok(delivery)) => {
                let span = crate::spans::dead_letter(&delivery);
                let stored = store(&database, &broker.system_users, &delivery, &stop);
                if !tracing::Instrument::instrument(stored, span).await {
                    break;
                }
            }
            Some(Err(error)) => {
                if cancelled {
                    break;
                }
                channel.wait_for_recovery(error).await?;
            }
        }
    }
    let _ = channel.close(200, "drained".into()).await;
    Ok(())
}

/// Stores a dead letter (each event of a dead pack), waiting out database outages. `false` when
/// stopped while waiting.
async fn store(database: &Database, system: &SystemUsers, delivery: &Delivery, stop: &CancellationToken) -> bool {
    for dead in describe_all(delivery, system) {
        if !store_one(database, &dead, stop).await {
            return false;
        }
    }
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::info!(%error, "an ack was lost; the dead letter will come again and be stored once");
    }
    true
}

async fn store_one(database: &Database, dead: &NewDeadLetter, stop: &CancellationToken) -> bool {
    let mut reduced: Option<NewDeadLetter> = None;
    loop {
        let record = reduced.as_ref().unwrap_or(dead);
        match dead_letters::insert(&database.pool, record).await {
            Ok(new) => {
                if new {
                    tracing::info!(dead_letter.id = %dead.id, event.id = dead.event_id, reason = %dead.reason, "dead letter stored");
                    // The worker counts its own when it sends them; the broker's (a delivery
                    // limit, an expiry) are first seen here.
                    if !matches!(dead.error_kind.as_str(), "poison" | "exhausted") {
                        metrics::counter!(
                            automation_shared::meters::WORKER_DEAD_LETTERED,
                            "kind" => dead.error_kind.clone(),
                            "reason" => "broker"
                        )
                        .increment(1);
                    }
                }
                return true;
            }
            Err(error) if db::classify(&error) == Failure::Unavailable => {
                if !database.wait_until_up(stop).await {
                    return false;
                }
            }
            Err(error) if reduced.is_none() => {
                // Something of the message itself the database will not take: keep what says
                // what it was (its id, reason, routing key, history) and say why the rest is not
                // here, so the intake goes on behind it.
                tracing::error!(%error, dead_letter.id = %dead.id, "could not store a dead letter whole; storing its record without body and properties");
                reduced = Some(NewDeadLetter {
                    reason: format!("{} (stored without its body and properties: {error})", dead.reason)
                        .chars()
                        .take(4000)
                        .collect(),
                    properties: json!({}),
                    body: Vec::new(),
                    body_bytes: Some(dead.body_bytes.unwrap_or(dead.body.len() as u64)),
                    history: None,
                    ..dead.clone()
                });
            }
            Err(error) => {
                // Even the bare record failed: the database itself is wrong. Keep the message in
                // the queue and say so loudly: nothing is dropped.
                tracing::error!(%error, dead_letter.id = %dead.id, "could not store a dead letter; it stays in the queue");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                if stop.is_cancelled() {
                    return false;
                }
            }
        }
    }
}

/// Everything about a dead message, from its headers (ours, or the broker's `x-death`; a
/// header of ours counts only on a message the system published, so nobody can dictate the
/// routing key, id or reason of a dead letter) .
pub fn describe(delivery: &Delivery, system: &SystemUsers) -> NewDeadLetter {
    describe_message(
        delivery.exchange.as_str(),
        delivery.routing_key.as_str(),
        None,
        &delivery.properties,
        &delivery.data,
        system,
    )
}

/// The dead letters a delivery holds: itself, or each event of a pack the broker dead-lettered
/// (a pack that kept failing its worker), each with the pack's death. Only the system's packs
/// are opened: anyone else's is kept whole, as it came.
pub fn describe_all(delivery: &Delivery, system: &SystemUsers) -> Vec<NewDeadLetter> {
    if !pack::is_pack(&delivery.properties) || !Origin::of(&delivery.properties, system).is_system() {
        return vec![describe(delivery, system)];
    }
    let Some(events) = pack::unpack(&delivery.data) else {
        return vec![describe(delivery, system)];
    };
    let death = delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-death").cloned());
    events
        .into_iter()
        .map(|event| {
            let mut headers = event.properties.headers().clone().unwrap_or_default();
            if let Some(death) = &death {
                headers.insert("x-death".into(), death.clone());
            }
            let properties = event.properties.clone().with_headers(headers);
            // The sequencer wrote the routing key it checked into the pack.
            describe_message(
                delivery.exchange.as_str(),
                &event.routing_key,
                Some(&event.routing_key),
                &properties,
                &event.body,
                system,
            )
        })
        .collect()
}

fn describe_message(
    exchange: &str,
    delivered_with: &str,
    known_routing_key: Option<&str>,
    properties: &BasicProperties,
    data: &[u8],
    system: &SystemUsers,
) -> NewDeadLetter {
    let now = Utc::now();
    let death = broker_death(properties);
    let ours = system.published(properties);
    let header = |name: &str| if ours { header(properties, name) } else { None };
    let routing_key = known_routing_key
        .map(str::to_string)
        .or_else(|| header(headers::ORIGINAL_ROUTING_KEY))
        .or_else(|| death.as_ref().and_then(|d| d.routing_key.clone()))
        .unwrap_or_else(|| delivered_with.to_string());
    let origin_queue = header(headers::ORIGIN_QUEUE).or_else(|| death.as_ref().and_then(|d| d.queue.clone()));
    let (error_kind, reason) = match (header(headers::ERROR_KIND), header(headers::DEAD_REASON)) {
        (Some(kind), Some(reason)) => (kind, reason),
        _ => match &death {
            Some(d) if d.reason == "delivery_limit" => (
                "delivery_limit".to_string(),
                format!(
                    "delivery_limit: delivered {} times without being settled; it may crash or stall the worker",
                    d.count.map_or_else(|| "too many".to_string(), |c| c.to_string())
                ),
            ),
            Some(d) => (d.reason.clone(), format!("{}: dead-lettered by the broker", d.reason)),
            None => ("unknown".to_string(), "arrived on the dead-letter exchange without a reason".to_string()),
        },
    };
    // Best effort: what the message says about itself, for filtering.
    static NO_PUBLISHERS: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    // Read as its own sender's, so who may send what does not hide its id and type here.
    let sender = SystemUsers::new(properties.user_id().as_ref().map_or("", |u| u.as_str()), &[]);
    let as_sent = properties.clone().with_user_id(sender.own().into());
    let limits = Limits { max_bytes: usize::MAX, publishers: &NO_PUBLISHERS, system: &sender };
    let parsed = Envelope::parse(&routing_key, &as_sent, data, limits);
    let event_id = header(headers::EVENT_ID).or_else(|| parsed.as_ref().ok().map(|e| e.id.clone()));
    let event_type =
        header(headers::EVENT_TYPE).or_else(|| parsed.as_ref().ok().map(|e| e.event_type.as_str().to_string()));
    let id = header(headers::DEAD_LETTER_ID).and_then(|i| Uuid::parse_str(&i).ok()).unwrap_or_else(|| {
        // The broker dead-lettered it: derive an id from the message and its first death, so a
        // redelivered copy is stored once.
        let identity = Uuid::new_v5(&ID_NAMESPACE, &[routing_key.as_bytes(), b"\n", data].concat());
        let replays = header(automation_shared::dead_letters::REPLAY_COUNT_HEADER).unwrap_or_default();
        let first_death = death.as_ref().and_then(|d| d.time).unwrap_or(0);
        derived_id(&format!("broker-dead:{reason}:{first_death}:{replays}"), &identity.to_string())
    });
    let time =
        |name: &str| header(name).and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    // Whatever the message says about itself fits its column (an unknown type can be any length).
    let clamp = |text: String, chars: usize| text.chars().take(chars).collect::<String>();
    let (body, body_bytes) = if data.len() > MAX_STORED_BODY {
        (data[..MAX_STORED_BODY].to_vec(), Some(data.len() as u64))
    } else {
        (data.to_vec(), None)
    };
    NewDeadLetter {
        id,
        event_id: event_id.map(|e| clamp(e, 128)),
        event_type: event_type.map(|t| clamp(t, 128)),
        reason: clamp(reason, 4000),
        error_kind: clamp(error_kind, 24),
        origin_queue: origin_queue.map(|q| clamp(q, 255)),
        exchange: Some(clamp(exchange.to_string(), 255)),
        routing_key: clamp(routing_key, 255),
        properties: properties_json(properties),
        body,
        body_bytes,
        attempts: int_header(properties, headers::ATTEMPT)
            .map(|a| a.max(0) as u32)
            .or_else(|| death.as_ref().and_then(|d| d.count))
            .unwrap_or(1),
        history: failures::history_of(properties),
        first_failed_at: time(headers::FIRST_FAILED_AT).unwrap_or(now),
        dead_at: time(headers::DEAD_AT).unwrap_or(now),
    }
}

struct BrokerDeath {
    reason: String,
    queue: Option<String>,
    routing_key: Option<String>,
    count: Option<u32>,
    time: Option<u64>,
}

/// The most recent entry of the broker's `x-death` header.
fn broker_death(properties: &BasicProperties) -> Option<BrokerDeath> {
    let headers = properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let get = |name: &str| first.inner().get(name).and_then(amqp_string);
    let routing_key = match first.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(amqp_string),
        _ => None,
    };
    Some(BrokerDeath {
        reason: get("reason").unwrap_or_else(|| "unknown".into()),
        queue: get("queue"),
        routing_key,
        count: get("count").and_then(|c| c.parse().ok()),
        time: match first.inner().get("time") {
            Some(AMQPValue::Timestamp(t)) => Some(*t),
            _ => None,
        },
    })
}

/// The AMQP properties as JSON, for the store and for replay.
pub fn properties_json(properties: &BasicProperties) -> Value {
    let mut out = Map::new();
    let mut put = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            out.insert(name.to_string(), Value::String(value));
        }
    };
    put("contentType", properties.content_type().as_ref().map(|v| v.to_string()));
    put("contentEncoding", properties.content_encoding().as_ref().map(|v| v.to_string()));
    put("messageId", properties.message_id().as_ref().map(|v| v.to_string()));
    put("correlationId", properties.correlation_id().as_ref().map(|v| v.to_string()));
    put("type", properties.kind().as_ref().map(|v| v.to_string()));
    put("userId", properties.user_id().as_ref().map(|v| v.to_string()));
    put("appId", properties.app_id().as_ref().map(|v| v.to_string()));
    if let Some(timestamp) = properties.timestamp() {
        out.insert("timestamp".into(), json!(timestamp));
    }
    if let Some(mode) = properties.delivery_mode() {
        out.insert("deliveryMode".into(), json!(mode));
    }
    let headers: Map<String, Value> = properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| k.as_str() != "x-death")
                .filter_map(|(k, v)| amqp_string(v).map(|v| (k.to_string(), Value::String(v))))
                .collect()
        })
        .unwrap_or_default();
    out.insert("headers".into(), Value::Object(headers));
    Value::Object(out)
}
