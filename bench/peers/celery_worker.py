"""The Celery peer of `make bench-compare`: what the FastAPI + Celery backend did with a decision
and with a request.

Two tasks, each applied in ONE MySQL transaction per event, as a careful Celery deployment does
it. `approval.decided`:

1. insert the event id into `processed_events` (the inbox): a redelivered task (acks late, a
   worker killed after the commit) fails on the primary key and is skipped;
2. lock the approval (`select ... for update`) and check the state machine: only a PENDING (or
   ESCALATED) approval may become APPROVED or REJECTED; any other move is recorded as a refusal;
3. update it with a version bump;
4. insert an audit row;
5. commit, then Celery acks (task_acks_late).

`approval.requested`: the inbox row as above; the workflow read with a shared lock (it must exist
and be ACTIVE, or the request is refused `not_found` / `invalid_state`); the approval inserted
PENDING (an id taken already is refused `duplicate`); an audit row; commit.

Settings are the ones the brief names: prefork, concurrency 2 (given on the command line by the
driver), prefetch multiplier 4, acks late, a quorum queue like automation-engine's work queues, no
result backend. Configuration comes from the environment the driver sets:

- PEER_AMQP_URL    amqp://guest:guest@127.0.0.1:5672//
- PEER_QUEUE       the queue name (unique per bench run)
- PEER_MYSQL       host:port:user:database (no password: the local MariaDB)
"""

import json
import os
from datetime import datetime, timezone

import pymysql
from celery import Celery
from celery.signals import worker_process_init

QUEUE = os.environ.get("PEER_QUEUE", "bench-peer.celery")

app = Celery("bench_peer", broker=os.environ.get("PEER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    task_default_queue=QUEUE,
    # Quorum, as automation-engine's work queues are (Celery >= 5.5 knows them and turns off the
    # global QoS quorum queues do not support).
    task_default_queue_type="quorum",
    worker_detect_quorum_queues=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

# Valid moves of an approval, as in automation-engine's lifecycle.
MOVES = {"PENDING": {"APPROVED", "REJECTED", "ESCALATED"}, "ESCALATED": {"APPROVED", "REJECTED"}}

_connection = None


def _connect():
    host, port, user, database = os.environ.get("PEER_MYSQL", "127.0.0.1:3306:root:bench_peer").split(":")
    return pymysql.connect(
        host=host, port=int(port), user=user, database=database, autocommit=False, charset="utf8mb4"
    )


@worker_process_init.connect
def _open_connection(**_):
    # One connection per pool process, opened after the fork (a socket must not be shared).
    global _connection
    _connection = _connect()


def _db():
    global _connection
    if _connection is None or not _connection.open:
        _connection = _connect()
    return _connection


@app.task(name="approval.decided", bind=True, acks_late=True)
def approval_decided(self, data, actor_id=None):
    """Apply one decision: `data` is the event's data, `{approvalId, status, reason?, expectedVersion?}`."""
    event_id = self.request.id
    db = _db()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    try:
        with db.cursor() as cur:
            try:
                cur.execute(
                    "insert into processed_events (event_id, type, outcome, processed_at) values (%s, %s, %s, %s)",
                    (event_id, "approval.decided", "applied", now),
                )
            except pymysql.err.IntegrityError:
                db.rollback()
                return "duplicate"
            cur.execute("select status, version from approvals where id = %s for update", (data["approvalId"],))
            row = cur.fetchone()
            to = data.get("status")
            refusal = None
            if row is None:
                refusal = "not_found"
            elif data.get("expectedVersion") is not None and data["expectedVersion"] != row[1]:
                refusal = "version_conflict"
            elif to not in ("APPROVED", "REJECTED") or to not in MOVES.get(row[0], ()):
                refusal = "invalid_transition"
            if refusal:
                cur.execute(
                    "update processed_events set outcome = 'rejected', reason_code = %s where event_id = %s",
                    (refusal, event_id),
                )
                action, details = "rejected", {"reason": refusal}
            else:
                cur.execute(
                    "update approvals set status = %s, decided_by = %s, reason = %s, decided_at = %s, "
                    "updated_at = %s, version = version + 1 where id = %s",
                    (to, actor_id, data.get("reason"), now, now, data["approvalId"]),
                )
                action = to.lower()
                details = {"from": row[0], "to": to, "reason": data.get("reason"), "version": row[1] + 1}
            cur.execute(
                "insert into audit_log (entity, entity_id, action, actor_id, event_id, details, created_at) "
                "values ('approval', %s, %s, %s, %s, %s, %s)",
                (data["approvalId"], action, actor_id, event_id, json.dumps(details), now),
            )
        db.commit()
        return refusal or "applied"
    except pymysql.err.OperationalError:
        # Deadlock, lock wait timeout, lost connection: roll back and let Celery retry it.
        try:
            db.rollback()
        except Exception:  # noqa: BLE001 - the connection may be gone; the retry reconnects
            pass
        raise self.retry(countdown=1, max_retries=5)


@app.task(name="approval.requested", bind=True, acks_late=True)
def approval_requested(self, data, actor_id=None):
    """Create one approval: `data` is `{approvalId, workflowId, title, amount?, currency?, requesterId, details?}`."""
    event_id = self.request.id
    db = _db()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    try:
        with db.cursor() as cur:
            try:
                cur.execute(
                    "insert into processed_events (event_id, type, outcome, processed_at) values (%s, %s, %s, %s)",
                    (event_id, "approval.requested", "applied", now),
                )
            except pymysql.err.IntegrityError:
                db.rollback()
                return "duplicate"
            cur.execute("select status from workflows where id = %s lock in share mode", (data["workflowId"],))
            workflow = cur.fetchone()
            refusal = None
            if workflow is None:
                refusal = "not_found"
            elif workflow[0] != "ACTIVE":
                refusal = "invalid_state"
            else:
                try:
                    cur.execute(
                        "insert into approvals (id, workflow_id, title, amount, currency, requester_id, status, "
                        "version, created_at, updated_at) values (%s, %s, %s, %s, %s, %s, 'PENDING', 1, %s, %s)",
                        (data["approvalId"], data["workflowId"], data["title"], data.get("amount"),
                         data.get("currency"), data["requesterId"], now, now),
                    )
                except pymysql.err.IntegrityError:
                    refusal = "duplicate"
            if refusal:
                cur.execute(
                    "update processed_events set outcome = 'rejected', reason_code = %s where event_id = %s",
                    (refusal, event_id),
                )
                action, details = "rejected", {"reason": refusal}
            else:
                action = "requested"
                details = {"workflowId": data["workflowId"], "title": data["title"], "amount": data.get("amount"),
                           "currency": data.get("currency"), "details": data.get("details")}
            cur.execute(
                "insert into audit_log (entity, entity_id, action, actor_id, event_id, details, created_at) "
                "values ('approval', %s, %s, %s, %s, %s, %s)",
                (data["approvalId"], action, actor_id, event_id, json.dumps(details), now),
            )
        db.commit()
        return refusal or "applied"
    except pymysql.err.OperationalError:
        try:
            db.rollback()
        except Exception:  # noqa: BLE001 - the connection may be gone; the retry reconnects
            pass
        raise self.retry(countdown=1, max_retries=5)


SCHEMA = [
    """create table workflows (
        id char(36) character set ascii not null,
        name varchar(200) not null,
        status varchar(16) character set ascii not null,
        version int unsigned not null default 1,
        primary key (id)
    ) engine = InnoDB default charset = utf8mb4""",
    """create table approvals (
        id char(36) character set ascii not null,
        workflow_id char(36) character set ascii not null,
        title varchar(300) not null,
        amount decimal(19, 4) null,
        currency char(3) character set ascii null,
        requester_id char(36) character set ascii not null,
        status varchar(16) character set ascii not null,
        decided_by varchar(64) null,
        reason text null,
        version int unsigned not null default 1,
        created_at datetime(6) not null default current_timestamp(6),
        updated_at datetime(6) not null default current_timestamp(6),
        decided_at datetime(6) null,
        primary key (id),
        key approvals_workflow (workflow_id),
        key approvals_status (status)
    ) engine = InnoDB default charset = utf8mb4""",
    """create table audit_log (
        id bigint unsigned not null auto_increment,
        entity varchar(64) not null,
        entity_id varchar(64) not null,
        action varchar(64) not null,
        actor_id varchar(64) null,
        event_id varchar(128) null,
        details json null,
        created_at datetime(6) not null,
        primary key (id),
        key audit_log_entity (entity, entity_id),
        key audit_log_event (event_id)
    ) engine = InnoDB default charset = utf8mb4""",
    """create table processed_events (
        event_id varchar(128) character set ascii not null,
        type varchar(64) not null,
        outcome varchar(16) not null,
        reason_code varchar(32) null,
        processed_at datetime(6) not null,
        primary key (event_id)
    ) engine = InnoDB default charset = utf8mb4""",
]
