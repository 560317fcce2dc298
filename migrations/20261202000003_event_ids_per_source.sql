-- CloudEvents make `source` + `id` unique: two publishers may use the same id under their own
-- sources, and one cannot occupy another's ids. The inbox and the retry bookkeeping know an event
-- by both. Sources compare exactly (a URI reference is case-sensitive).
alter table inbox
    modify source varchar(255) character set utf8mb4 collate utf8mb4_bin not null,
    drop primary key,
    add primary key (event_id, source);

-- Rows of events retrying during the upgrade have no source: their next attempt writes a new row,
-- and the sweep below of the old one happens when the event is processed (by id and source '').
alter table event_attempts
    add column source varchar(255) character set utf8mb4 collate utf8mb4_bin not null default '' after event_id,
    drop primary key,
    add primary key (event_id, source);
