-- The W3C trace context of the event that asked for a run: every attempt, also one the scheduler
-- starts later (a countdown, a retry), continues that trace. Longer values are not kept.
alter table automation_runs
    add column traceparent varchar(128) character set ascii null,
    add column tracestate varchar(512) character set ascii null;
