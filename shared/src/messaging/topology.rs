//! Every exchange, queue and binding, declared idempotently in one place. Both binaries and
//! `automation-worker topology` call [`declare`].

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::events::{EventType, WorkQueue};

/// The names of everything on the broker, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Names {
        Names { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A new name for an API process's reply queue, where the worker sends copies of the
    /// notifications of the events a request there waits for (`Prefer: wait`).
    pub fn api_reply_queue(&self) -> String {
        format!("{}.api.{}", self.prefix, uuid::Uuid::new_v4().simple())
    }

    /// Whether `name` is an API reply queue of this prefix ([`Names::api_reply_queue`]): the only
    /// destinations the worker sends copies to, so no publisher can make it write into a work
    /// queue.
    pub fn is_api_reply_queue(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix(".api."))
            .is_some_and(crate::messaging::is_reply_queue_id)
    }

    /// Topic exchange: everything that asks the system to do something.
    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// Topic exchange: what the system did.
    pub fn notifications(&self) -> String {
        format!("{}.notifications", self.prefix)
    }

    /// Topic exchange: dead letters, routed by their original routing key.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Fanout exchange behind `events` for routing keys no queue is bound to, so a message with
    /// an unknown type reaches a worker and is dead-lettered with its reason instead of vanishing.
    pub fn unrouted(&self) -> String {
        format!("{}.unrouted", self.prefix)
    }

    pub fn work_queue(&self, queue: WorkQueue) -> String {
        format!("{}.{}", self.prefix, queue.suffix())
    }

    /// Partition `index` of the `commands` queue in the partitioned layout: the sequencer moves
    /// each event here by its entity key; one worker consumes it at a time.
    pub fn partition(&self, index: u16) -> String {
        format!("{}.commands.p{index}", self.prefix)
    }

    /// The sequencer's lock: an exclusive queue, which only one connection can hold at a time
    /// and which vanishes with that connection.
    pub fn sequencer_lock(&self) -> String {
        format!("{}.commands.sequencer", self.prefix)
    }

    /// Holds messages of `queue` for `delay_ms`, then hands them back to it. The delay is in the
    /// name because a queue's TTL cannot change once it exists.
    pub fn retry_queue(&self, queue: WorkQueue, delay_ms: u64) -> String {
        format!("{}.{}.retry.{delay_ms}ms", self.prefix, queue.suffix())
    }

    /// Feeds the dead-letter store.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(*key), value.clone());
    }
    table
}

/// Arguments every quorum queue here shares.
fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut pairs = vec![
        // Replicated and durable: survives a node loss, and counts redeliveries.
        ("x-queue-type", string("quorum")),
        // Dead letters are re-published with confirms by the broker, so none is lost on the way
        // (needs reject-publish overflow).
        ("x-dead-letter-strategy", string("at-least-once")),
        ("x-overflow", string("reject-publish")),
    ];
    pairs.extend(extra.iter().cloned());
    args(&pairs)
}

/// The settings topology depends on.
#[derive(Debug, Clone)]
pub struct TopologySettings<'a> {
    pub retry_delays_ms: &'a [u64],
    pub delivery_limit: u32,
    /// Partition queues behind `commands` (see [`Names::partition`]).
    pub partitions: u16,
    /// `x-quorum-initial-group-size` for the quorum queues this creates; `None`: the broker's
    /// default (3 in RabbitMQ 3.10), capped by the cluster's nodes.
    pub quorum_initial_group_size: Option<u16>,
}

impl<'a> TopologySettings<'a> {
    /// The settings a process's configuration gives.
    pub fn of(worker: &'a crate::config::WorkerConfig) -> TopologySettings<'a> {
        TopologySettings {
            retry_delays_ms: &worker.retry_delays_ms,
            delivery_limit: worker.delivery_limit,
            partitions: worker.partitions,
            quorum_initial_group_size: None,
        }
    }

    /// The settings of a whole configuration: the worker's, and the quorum queues' group size.
    pub fn of_config(config: &'a crate::config::Config) -> TopologySettings<'a> {
        TopologySettings {
            quorum_initial_group_size: config.amqp.quorum_initial_group_size,
            ..Self::of(&config.worker)
        }
    }
}

/// The argument that sets how many nodes a new quorum queue gets.
const GROUP_SIZE: &str = "x-quorum-initial-group-size";

/// Declares a quorum queue, with `x-quorum-initial-group-size` when one is configured. RabbitMQ
/// reads that argument only when it creates the queue, yet refuses a redeclaration whose value
/// differs from the one the queue was created with (PRECONDITION_FAILED, which closes the
/// channel, and names the value the queue has). So that setting, changing or unsetting it does
/// not break on the queues that exist, a queue that refuses the configured value is declared
/// again with the value it has: every other argument is still compared by the broker.
async fn declare_quorum_queue(
    connection: &lapin::Connection,
    channel: &mut Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
    group_size: Option<u16>,
) -> lapin::Result<()> {
    let error = match channel.queue_declare(name.into(), options, with_group_size(&arguments, group_size)).await {
        Ok(_) => return Ok(()),
        Err(error) if error.to_string().contains(GROUP_SIZE) => error,
        Err(error) => return Err(error),
    };
    let Some(current) = current_group_size(&error.to_string()) else {
        return Err(error);
    };
    tracing::info!(
        queue = name,
        configured = group_size,
        current,
        "the queue keeps the x-quorum-initial-group-size it was created with (only creation reads it; rabbitmq-queues grow/shrink change its members)"
    );
    *channel = connection.create_channel().await?;
    channel.queue_declare(name.into(), options, with_group_size(&arguments, current)).await.map(drop)
}

fn with_group_size(arguments: &FieldTable, size: Option<u16>) -> FieldTable {
    let mut arguments = arguments.clone();
    if let Some(size) = size {
        arguments.insert(ShortString::from(GROUP_SIZE), AMQPValue::LongInt(i32::from(size)));
    }
    arguments
}

/// The group size a queue has, from RabbitMQ's refusal: `... but current is none`, `... but
/// current is '3'` or `... but current is the value '3' of type 'signedint'`. `None` when the
/// text says none of these.
fn current_group_size(refusal: &str) -> Option<Option<u16>> {
    let current = refusal.rsplit_once("but current is ")?.1;
    if current.starts_with("none") {
        return Some(None);
    }
    let quoted = current.strip_prefix("the value ").unwrap_or(current);
    let value = quoted.strip_prefix('\'')?.split('\'').next()?;
    value.parse().ok().map(Some)
}

/// Declares every exchange, queue and binding, on channels of its own on `connection`. Safe to
/// run any number of times, from any number of processes at once.
pub async fn declare(
    connection: &lapin::Connection,
    names: &Names,
    settings: &TopologySettings<'_>,
) -> lapin::Result<()> {
    let mut channel = connection.create_channel().await?;
    let result = declare_on(connection, &mut channel, names, settings).await;
    let _ = channel.close(200, "topology declared".into()).await;
    result
}

async fn declare_on(
    connection: &lapin::Connection,
    channel: &mut Channel,
    names: &Names,
    settings: &TopologySettings<'_>,
) -> lapin::Result<()> {
    let group_size = settings.quorum_initial_group_size;
    let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    channel.exchange_declare(names.unrouted().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    channel
        .exchange_declare(
            names.events().into(),
            ExchangeKind::Topic,
            durable,
            args(&[("alternate-exchange", string(&names.unrouted()))]),
        )
        .await?;
    channel.exchange_declare(names.notifications().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel.exchange_declare(names.dead().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;

    let queue_options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    for queue in WorkQueue::ALL {
        let name = names.work_queue(queue);
        declare_quorum_queue(
            connection,
            channel,
            &name,
            queue_options,
            quorum(&[
                // What the worker cannot dead-letter itself (a message that kills it every
                // time) still ends in the store.
                ("x-dead-letter-exchange", string(&names.dead())),
                // Our own attempt counter decides retries; this only stops crash loops.
                ("x-delivery-limit", AMQPValue::LongInt(settings.delivery_limit as i32)),
            ]),
            group_size,
        )
        .await?;
        for event_type in EventType::ALL.iter().filter(|t| t.queue() == queue) {
            channel
                .queue_bind(
                    name.clone().into(),
                    names.events().into(),
                    event_type.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for delay in settings.retry_delays_ms {
            declare_quorum_queue(
                connection,
                channel,
                &names.retry_queue(queue, *delay),
                queue_options,
                quorum(&[
                    // Expired messages go back to the work queue through the default exchange.
                    ("x-message-ttl", AMQPValue::LongLongInt(*delay as i64)),
                    ("x-dead-letter-exchange", string("")),
                    ("x-dead-letter-routing-key", string(&name)),
                ]),
                group_size,
            )
            .await?;
        }
    }
    // Automation events moved from `tasks` to `commands` (they are short transactions, and
    // ordered with the rest): a binding left by an older version would deliver them twice.
    for event_type in EventType::ALL.iter().filter(|t| t.queue() != WorkQueue::Tasks) {
        channel
            .queue_unbind(
                names.work_queue(WorkQueue::Tasks).into(),
                names.events().into(),
                event_type.as_str().into(),
                FieldTable::default(),
            )
            .await?;
    }
    for index in 0..settings.partitions {
        declare_quorum_queue(
            connection,
            channel,
            &names.partition(index),
            queue_options,
            quorum(&[
                // One consumer at a time, the others wait: per-entity order by construction.
                ("x-single-active-consumer", AMQPValue::Boolean(true)),
                ("x-dead-letter-exchange", string(&names.dead())),
                ("x-delivery-limit", AMQPValue::LongInt(settings.delivery_limit as i32)),
            ]),
            group_size,
        )
        .await?;
    }
    channel
        .queue_bind(
            names.work_queue(WorkQueue::Commands).into(),
            names.unrouted().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    declare_quorum_queue(connection, channel, &names.dead_letter_queue(), queue_options, quorum(&[]), group_size)
        .await?;
    channel
        .queue_bind(
            names.dead_letter_queue().into(),
            names.dead().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Removes everything [`declare`] made (tests and `topology --delete`). Messages in the queues
/// are lost. One failure (which closes its channel) does not stop the rest: each object gets a
/// channel of its own after a failure, and the first error is returned at the end.
pub async fn delete(
    connection: &lapin::Connection,
    names: &Names,
    settings: &TopologySettings<'_>,
) -> lapin::Result<()> {
    let mut queues = vec![names.dead_letter_queue()];
    for queue in WorkQueue::ALL {
        queues.push(names.work_queue(queue));
        queues.extend(settings.retry_delays_ms.iter().map(|d| names.retry_queue(queue, *d)));
    }
    queues.extend((0..settings.partitions).map(|index| names.partition(index)));
    let mut channel = connection.create_channel().await?;
    let mut first_error = None;
    for queue in queues {
        if let Err(error) = channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await {
            first_error.get_or_insert(error);
            channel = connection.create_channel().await?;
        }
    }
    for exchange in [names.events(), names.notifications(), names.dead(), names.unrouted()] {
        if let Err(error) = channel.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await {
            first_error.get_or_insert(error);
            channel = connection.create_channel().await?;
        }
    }
    let _ = channel.close(200, "deleted".into()).await;
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_size_a_queue_has_is_read_from_the_brokers_refusal() {
        let refusal = |current: &str| {
            format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'q' in vhost '/': received the value '3' of type 'signedint' but current is {current}"
            )
        };
        assert_eq!(current_group_size(&refusal("none")), Some(None));
        assert_eq!(current_group_size(&refusal("the value '5' of type 'signedint'")), Some(Some(5)));
        assert_eq!(current_group_size(&refusal("'3'")), Some(Some(3)));
        assert_eq!(current_group_size(&refusal("something else")), None);
        assert_eq!(current_group_size("connection reset"), None);
    }

    #[test]
    fn every_name_takes_the_prefix() {
        let names = Names::new("acme");
        assert_eq!(names.events(), "acme.events");
        assert_eq!(names.notifications(), "acme.notifications");
        assert_eq!(names.dead(), "acme.dead");
        assert_eq!(names.work_queue(WorkQueue::Commands), "acme.commands");
        assert_eq!(names.work_queue(WorkQueue::Tasks), "acme.tasks");
        assert_eq!(names.retry_queue(WorkQueue::Tasks, 1000), "acme.tasks.retry.1000ms");
        assert_eq!(names.partition(7), "acme.commands.p7");
        assert_eq!(names.dead_letter_queue(), "acme.dead-letters");
    }

    #[test]
    fn only_names_of_the_api_reply_queue_pattern_of_this_prefix_are_reply_queues() {
        let names = Names::new("acme");
        let ours = names.api_reply_queue();
        assert!(names.is_api_reply_queue(&ours), "{ours}");
        assert!(crate::messaging::looks_like_reply_queue(&ours), "{ours}");
        let hex = "0123456789abcdef0123456789abcdef";
        for name in [
            "acme.commands".to_string(),
            "acme.events".to_string(),
            "acme.commands.p0".to_string(),
            format!("acme.api.{}", &hex[..31]),
            format!("acme.api.{hex}0"),
            format!("acme.api.{}", hex.to_uppercase()),
            format!("acme.api.{hex}.x"),
            format!("other.api.{hex}"),
            format!("acmeacme.api.{hex}"),
            "amq.rabbitmq.reply-to".to_string(),
            String::new(),
        ] {
            assert!(!names.is_api_reply_queue(&name), "{name:?}");
        }
        assert!(crate::messaging::looks_like_reply_queue(&format!("other.api.{hex}")), "any prefix's shape");
        for name in
            ["acme.commands", ".api.0123456789abcdef0123456789abcdef", "a b.api.0123456789abcdef0123456789abcdef"]
        {
            assert!(!crate::messaging::looks_like_reply_queue(name), "{name:?}");
        }
        assert!(!crate::messaging::looks_like_reply_queue(&format!("{}.api.{hex}", "a".repeat(250))), "too long");
    }
}
