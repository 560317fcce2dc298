-- Per-entity order (docs/architecture.md, "Ordering"). Valid on MySQL 8 and MariaDB 10.11.

-- An entity key (`approval:<id>`, `workflow:<id>`, …) is held while one of its events waits: for
-- an entity it names that does not exist yet, or for another attempt after a transient failure.
-- Every later event on the key queues behind it in `deferred_events`, in arrival order, so
-- nothing overtakes it. `not_before` is when the first of them is due again, `state` why it
-- waits (`waiting` for an entity, `retrying` after a failure): an event that creates the entity
-- of its key may pass a `waiting` head, which waits for just that.
-- `partition` is the key's partition: only that partition's consumer creates holds on its keys,
-- so a consumer that found none for its partitions need not look again until it makes one.
create table entity_holds (
    entity_key varchar(160) character set ascii collate ascii_bin not null,
    `partition` smallint unsigned not null,
    not_before datetime(6) not null,
    state varchar(16) character set ascii not null,
    created_at datetime(6) not null default current_timestamp(6),
    primary key (entity_key),
    key entity_holds_due (not_before),
    key entity_holds_partition (`partition`)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- The events behind a hold, whole (routing key, AMQP properties, body), so they are applied
-- later exactly as if they had just been delivered. `seq` is their order.
create table deferred_events (
    seq bigint unsigned not null auto_increment,
    entity_key varchar(160) character set ascii collate ascii_bin not null,
    event_id varchar(128) character set utf8mb4 collate utf8mb4_bin not null,
    type varchar(64) character set ascii not null,
    routing_key varchar(255) not null,
    properties json not null,
    body mediumblob not null,
    -- The attempt it will be when it is tried again.
    attempt int unsigned not null default 1,
    -- Why it waits: `waiting` (for an entity it names), `queued` (behind an earlier event on its
    -- key) or `retrying` (after a transient failure).
    state varchar(16) character set ascii not null,
    detail text null,
    not_before datetime(6) not null,
    -- A `not_found` after this is final.
    wait_until datetime(6) not null,
    received_at datetime(6) not null,
    primary key (seq),
    key deferred_events_key (entity_key, seq),
    key deferred_events_event (event_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Running worker instances, for sharing the partitions out: each writes its heartbeat every
-- second and counts as gone a few seconds after the last.
create table worker_instances (
    id char(36) character set ascii not null,
    host varchar(255) not null,
    started_at datetime(6) not null,
    heartbeat_at datetime(6) not null,
    primary key (id),
    key worker_instances_heartbeat (heartbeat_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;
