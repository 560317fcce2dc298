-- The whole domain of automation-engine. Valid on MySQL 8 and MariaDB 10.11:
-- * ids are UUID text in CHAR(36) ASCII (MariaDB's native UUID type does not decode as uuid::Uuid);
-- * every table has a `seq` auto-increment primary key, so random UUIDs do not scatter inserts
--   across the clustered index and list cursors are plain numbers;
-- * only collations both servers know (utf8mb4_unicode_ci, utf8mb4_bin);
-- * event ids are case-sensitive (utf8mb4_bin): "A1" and "a1" are different events.

create table users (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    email varchar(254) not null,
    name varchar(200) not null,
    role varchar(16) character set ascii not null,
    password_hash varchar(255) character set ascii not null,
    active boolean not null default true,
    created_at datetime(6) not null default current_timestamp(6),
    updated_at datetime(6) not null default current_timestamp(6),
    primary key (seq),
    unique key users_id (id),
    unique key users_email (email)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Logged-out tokens, refused until they would have expired anyway.
create table revoked_tokens (
    jti varchar(64) character set ascii not null,
    user_id varchar(64) not null,
    expires_at datetime(6) not null,
    revoked_at datetime(6) not null default current_timestamp(6),
    primary key (jti),
    key revoked_tokens_expires (expires_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Failed logins per account and per client address, shared by every API replica.
create table login_failures (
    scope varchar(320) not null,
    failures int unsigned not null,
    window_started_at datetime(6) not null,
    primary key (scope)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table workflows (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    name varchar(200) not null,
    description text null,
    status varchar(16) character set ascii not null,
    approval_sla_hours int unsigned null,
    version int unsigned not null default 1,
    created_by varchar(64) null,
    created_at datetime(6) not null default current_timestamp(6),
    updated_at datetime(6) not null default current_timestamp(6),
    primary key (seq),
    unique key workflows_id (id),
    key workflows_status (status, seq)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table approvals (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    workflow_id char(36) character set ascii not null,
    title varchar(300) not null,
    amount decimal(19, 4) null,
    currency char(3) character set ascii null,
    requester_id char(36) character set ascii not null,
    status varchar(16) character set ascii not null,
    decided_by varchar(64) null,
    reason text null,
    escalated_to varchar(64) null,
    details json null,
    version int unsigned not null default 1,
    created_at datetime(6) not null default current_timestamp(6),
    updated_at datetime(6) not null default current_timestamp(6),
    decided_at datetime(6) null,
    escalated_at datetime(6) null,
    primary key (seq),
    unique key approvals_id (id),
    key approvals_workflow (workflow_id, seq),
    key approvals_status (status, seq),
    key approvals_requester (requester_id, seq),
    constraint approvals_workflow_fk foreign key (workflow_id) references workflows (id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Append-only and tamper-evident: each writer appends to its own hash chain (chain_id, chain_seq),
-- so no insert waits for another writer's; audit_seals pins the chains' heads periodically, so a
-- record removed from the end of a chain is noticed too.
create table audit_log (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    entity varchar(64) not null,
    entity_id varchar(64) not null,
    action varchar(64) not null,
    actor_id varchar(64) null,
    actor_type varchar(16) character set ascii not null,
    event_id varchar(128) character set utf8mb4 collate utf8mb4_bin null,
    correlation_id varchar(128) null,
    -- Canonical JSON text, hashed byte for byte (a JSON column would be re-ordered by MySQL 8).
    details mediumtext null,
    created_at datetime(6) not null,
    chain_id char(36) character set ascii not null,
    chain_seq bigint unsigned not null,
    prev_hash char(64) character set ascii not null,
    hash char(64) character set ascii not null,
    -- No index on `id`: nothing looks a record up by it, and each index is paid on every insert.
    primary key (seq),
    unique key audit_log_chain (chain_id, chain_seq),
    key audit_log_entity (entity, entity_id, seq),
    key audit_log_actor (actor_id, seq),
    key audit_log_event (event_id),
    key audit_log_created (created_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table audit_seals (
    seq bigint unsigned not null auto_increment,
    sealed_at datetime(6) not null,
    heads json not null,
    prev_hash char(64) character set ascii not null,
    hash char(64) character set ascii not null,
    primary key (seq)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Every event the worker has applied or refused, written in the same transaction as its effects:
-- the primary key is what makes a redelivery a no-op.
create table inbox (
    event_id varchar(128) character set utf8mb4 collate utf8mb4_bin not null,
    type varchar(64) character set ascii not null,
    source varchar(255) not null,
    actor_id varchar(64) null,
    actor_type varchar(16) character set ascii not null,
    correlation_id varchar(128) null,
    causation_id varchar(128) null,
    chain_depth int unsigned not null default 0,
    outcome varchar(16) character set ascii not null,
    reason_code varchar(32) character set ascii null,
    reason text null,
    entity varchar(64) null,
    entity_id varchar(64) null,
    rules json null,
    received_at datetime(6) not null,
    processed_at datetime(6) not null,
    primary key (event_id),
    key inbox_processed (processed_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Events waiting for another attempt after a transient failure (status `retrying`).
create table event_attempts (
    event_id varchar(128) character set utf8mb4 collate utf8mb4_bin not null,
    type varchar(64) null,
    attempts int unsigned not null,
    error_kind varchar(16) character set ascii not null,
    last_error text not null,
    first_failed_at datetime(6) not null,
    next_attempt_at datetime(6) null,
    updated_at datetime(6) not null,
    primary key (event_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Messages to publish after the transaction that wrote them commits. The worker that wrote them
-- publishes them right after its commit and deletes them by message id. Rows left behind by a
-- crash are swept: a relay leases them in a short transaction, publishes with no lock held, and
-- deletes its own leased rows; a lease left by a crashed relay expires.
create table outbox (
    id bigint unsigned not null auto_increment,
    message_id char(36) character set ascii not null,
    destination varchar(16) character set ascii not null,
    routing_key varchar(255) not null,
    body mediumblob not null,
    created_at datetime(6) not null default current_timestamp(6),
    lease_owner char(36) character set ascii null,
    lease_until datetime(6) null,
    primary key (id),
    unique key outbox_message (message_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table dead_letters (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    event_id varchar(128) character set utf8mb4 collate utf8mb4_bin null,
    type varchar(128) null,
    reason text not null,
    error_kind varchar(24) character set ascii not null,
    origin_queue varchar(255) null,
    exchange varchar(255) null,
    routing_key varchar(255) not null,
    properties json not null,
    body longblob not null,
    attempts int unsigned not null default 0,
    history json null,
    first_failed_at datetime(6) not null,
    dead_at datetime(6) not null,
    state varchar(16) character set ascii not null default 'dead',
    replay_count int unsigned not null default 0,
    replayed_at datetime(6) null,
    replayed_by varchar(64) null,
    discarded_at datetime(6) null,
    discarded_by varchar(64) null,
    primary key (seq),
    unique key dead_letters_id (id),
    key dead_letters_state (state, seq),
    key dead_letters_type (type, seq),
    key dead_letters_event (event_id),
    key dead_letters_dead_at (dead_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table rules (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    name varchar(200) not null,
    description text null,
    enabled boolean not null default true,
    priority int not null default 100,
    on_pattern varchar(128) character set ascii not null,
    condition_source text not null,
    actions json not null,
    stop_on_match boolean not null default false,
    version int unsigned not null default 1,
    created_by varchar(64) null,
    created_at datetime(6) not null default current_timestamp(6),
    updated_at datetime(6) not null default current_timestamp(6),
    primary key (seq),
    unique key rules_id (id),
    key rules_enabled (enabled, priority)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table automation_runs (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    automation varchar(128) character set ascii not null,
    params json null,
    state varchar(16) character set ascii not null,
    attempts int unsigned not null default 0,
    max_attempts int unsigned not null,
    result json null,
    error text null,
    run_at datetime(6) null,
    event_id varchar(128) character set utf8mb4 collate utf8mb4_bin null,
    schedule_name varchar(128) null,
    requested_by varchar(64) null,
    created_at datetime(6) not null default current_timestamp(6),
    started_at datetime(6) null,
    finished_at datetime(6) null,
    updated_at datetime(6) not null default current_timestamp(6),
    primary key (seq),
    unique key automation_runs_id (id),
    key automation_runs_due (state, run_at),
    key automation_runs_automation (automation, seq)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- Periodic automations defined in the database (more come from configuration).
create table schedules (
    name varchar(128) not null,
    cron varchar(128) not null,
    automation varchar(128) character set ascii not null,
    params json null,
    enabled boolean not null default true,
    created_at datetime(6) not null default current_timestamp(6),
    updated_at datetime(6) not null default current_timestamp(6),
    primary key (name)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

-- One row per fired tick: the primary key lets exactly one worker fire it.
create table schedule_ticks (
    schedule_name varchar(128) not null,
    tick_at datetime not null,
    run_id char(36) character set ascii not null,
    fired_at datetime(6) not null,
    primary key (schedule_name, tick_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;

create table insights (
    seq bigint unsigned not null auto_increment,
    id char(36) character set ascii not null,
    generation_id char(36) character set ascii not null,
    kind varchar(64) character set ascii not null,
    severity varchar(16) character set ascii not null,
    title varchar(300) not null,
    summary text not null,
    evidence json not null,
    recommendation text not null,
    suggested_rule json null,
    generated_at datetime(6) not null,
    primary key (seq),
    unique key insights_id (id),
    key insights_generation (generation_id)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;
