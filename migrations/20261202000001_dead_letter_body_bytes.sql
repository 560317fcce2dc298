-- A dead message too big to keep whole (over the store's limit, which keeps every insert below
-- MySQL's max_allowed_packet) is stored with a prefix of its body; this is the size it arrived
-- with. Such a dead letter is shown, never replayed.
alter table dead_letters add column body_bytes bigint unsigned null after body;
