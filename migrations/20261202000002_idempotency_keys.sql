-- What an Idempotency-Key stands for: per user and endpoint (`key_hash` is SHA-256 of user,
-- endpoint and key), the event the first request with it became (a random id, so nobody can
-- publish under it first), and the fingerprint of that request's event, so the same key with
-- another body is refused (422) rather than taken as a retry.
create table idempotency_keys (
    key_hash char(64) character set ascii not null,
    event_id char(36) character set ascii not null,
    body_hash char(64) character set ascii null,
    created_at datetime(6) not null default current_timestamp(6),
    primary key (key_hash),
    unique key idempotency_keys_event (event_id),
    key idempotency_keys_created (created_at)
) engine = InnoDB default charset = utf8mb4 collate = utf8mb4_unicode_ci;
