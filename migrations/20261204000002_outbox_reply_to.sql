-- A notification's second destination: the API reply queue of a request waiting for its cause
-- (`Prefer: wait`), which the relay sends a copy to through the default exchange. NULL for every
-- other row: those go only where `destination` says, as before.
alter table outbox
    add column reply_to varchar(255) character set ascii null;
