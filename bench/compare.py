#!/usr/bin/env python3
"""`make bench-compare`: automation-engine against the FastAPI + Celery stack it replaces.

Runs, interleaved in one run (project, peer, project, peer, ...), against the local RabbitMQ and
MariaDB, and prints one `ratio` line per figure (project / peer), the load averages and a one-line
JSON summary on stdout; progress goes to stderr. What is compared and how to read it:
docs/benchmarks.md. Started by bench/compare.sh, which builds the release binaries and the peers'
virtualenv and runs this with that virtualenv's Python.

1. Worker: N `approval.decided` events on N seeded PENDING approvals. The project's worker (the
   release build, default settings: partitioned layout, batch 100, two lanes) drains them from
   `<prefix>.events`, published as Spring's RabbitTemplate sends plain JSON; the peer is a Celery 5
   worker (bench/peers/celery_worker.py: prefork, concurrency 2, prefetch x4, acks late) applying
   each in one transaction. The queue is filled first; the clock runs from the first event applied
   to the last (start-up is not throughput). After each run every event must be applied exactly
   once (the project: inbox, approvals, audit records, empty outbox; the peer: its own tables), or
   the bench fails.
2. API: `PATCH /approvals/{id}` with a JWT, under wrk (-t2 -c64 by default) with a Lua script,
   against automation-api (release build; the worker stopped, so events stay in the commands
   queue) and the FastAPI peer (bench/peers/fastapi_app.py, 2 uvicorn workers); the queues are
   purged between runs, and after each the events confirmed must be in them.

CPU per event is utime + stime from /proc/<pid>/stat of the worker (the whole process tree for
prefork), mysqld and beam.smp (the processes listening on 3306 and 5672) over the measured
window, divided by the events in it. PSS is /proc/<pid>/smaps_rollup summed over the process
tree, the largest seen while loaded.

Environment (all optional):
  BENCH_COMPARE_REPEAT       runs per side and part, interleaved; the medians are reported (3)
  BENCH_COMPARE_EVENTS       events per worker run (20000)
  BENCH_COMPARE_DURATION     seconds of load per API run (15)
  BENCH_COMPARE_THREADS / BENCH_COMPARE_CONNECTIONS   wrk -t and -c (2, 64)
  BENCH_COMPARE_APPROVALS    approvals the API runs spread their PATCHes over (1000)
  BENCH_COMPARE_PARTS        "worker,api" (both), or one of them
  BENCH_COMPARE_TAG          the name of this run's databases and queues (set by compare.sh)

`compare.py cleanup` removes what a run with BENCH_COMPARE_TAG left (compare.sh's trap calls it).
"""

import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import amqp
import pymysql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
TAG = os.environ.get("BENCH_COMPARE_TAG") or f"benchcmp{os.getpid()}"
RUN_DIR = os.path.join(ROOT, ".local", "bench-compare", TAG)

MYSQL = dict(host="127.0.0.1", port=3306, user="root")
AMQP_HOST, AMQP_USER, AMQP_PASSWORD = "127.0.0.1:5672", "guest", "guest"

OURS_DB, PEER_DB = f"{TAG}_ours", f"{TAG}_peer"
PREFIX = TAG
PEER_QUEUE = f"{TAG}-peer.celery"
PEER_EXCHANGE = f"{TAG}-peer.events"
PEER_API_QUEUE = f"{TAG}-peer.api"

STALL_SECS = 60
TICK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        sys.exit(f"{name}: `{value}` is not a whole number")
    if number < 1:
        sys.exit(f"{name}: must be at least 1")
    return number


REPEAT = env_int("BENCH_COMPARE_REPEAT", 3)
EVENTS = env_int("BENCH_COMPARE_EVENTS", 20000)
DURATION = env_int("BENCH_COMPARE_DURATION", 15)
THREADS = env_int("BENCH_COMPARE_THREADS", 2)
CONNECTIONS = env_int("BENCH_COMPARE_CONNECTIONS", 64)
API_APPROVALS = env_int("BENCH_COMPARE_APPROVALS", 1000)
PARTS = [p.strip() for p in os.environ.get("BENCH_COMPARE_PARTS", "worker,api").split(",") if p.strip()]
for part in PARTS:
    if part not in ("worker", "api"):
        sys.exit(f"BENCH_COMPARE_PARTS: `{part}` is neither `worker` nor `api`")


def say(message):
    print(message, file=sys.stderr, flush=True)


class BenchFailure(Exception):
    pass


# ---------------------------------------------------------------- processes we start, and stop

STARTED = []


def start(name, argv, env, cwd):
    os.makedirs(RUN_DIR, exist_ok=True)
    log = open(os.path.join(RUN_DIR, f"{name}.log"), "ab")
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.bench_name = name
    STARTED.append(process)
    return process


def stop(process, grace=30):
    """SIGTERM to the process (and its group: prefork and uvicorn children), SIGKILL past grace."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            say(f"    {process.bench_name} did not stop within {grace} s: SIGKILL")
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    # Children left in the group (a pool process whose parent is gone).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if process in STARTED:
        STARTED.remove(process)
    return process.returncode


def stop_all():
    for process in list(STARTED):
        stop(process, grace=15)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60, process=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise BenchFailure(f"{process.bench_name} exited with {process.returncode} at start (log in {RUN_DIR})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise BenchFailure(f"{url} did not answer within {timeout} s")


# ---------------------------------------------------------------- /proc: CPU and memory

def children_of():
    tree = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def process_tree(pid):
    tree, pids, todo = children_of(), [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(tree.get(current, []))
    return pids


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def pss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 1024


def listener_pid(port):
    """The pid listening on 127.0.0.1:port (mysqld, beam.smp): other instances (a private
    RabbitMQ of a fault test) are not counted."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return None
    match = re.search(r"pid=(\d+)", out)
    return int(match.group(1)) if match else None


SERVICES = {}


def service_pids():
    if not SERVICES:
        SERVICES["mysqld"] = listener_pid(3306)
        SERVICES["rabbitmq"] = listener_pid(5672)
        for name, pid in SERVICES.items():
            if pid is None:
                say(f"warning: no process found listening for {name}: its CPU is not counted")
    return {name: pid for name, pid in SERVICES.items() if pid}


class CpuWindow:
    """CPU seconds of the side's own processes and of the shared services between two marks."""

    def __init__(self, own_pid):
        self.own_pid = own_pid

    def snapshot(self):
        values = {"server": cpu_seconds(process_tree(self.own_pid))}
        for name, pid in service_pids().items():
            values[name] = cpu_seconds([pid])
        return values

    @staticmethod
    def per_item(before, after, items):
        per = {name: (after[name] - before[name]) * 1000.0 / items for name in after}
        per["total"] = sum(per.values())
        return per


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------- MySQL and RabbitMQ

def mysql(database=None, autocommit=True):
    return pymysql.connect(database=database, autocommit=autocommit, charset="utf8mb4", **MYSQL)


def scalar(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()[0]


def recreate_database(name):
    conn = mysql()
    with conn.cursor() as cur:
        cur.execute(f"drop database if exists `{name}`")
        cur.execute(f"create database `{name}`")
    conn.close()


def amqp_connection():
    conn = amqp.Connection(host=AMQP_HOST, userid=AMQP_USER, password=AMQP_PASSWORD, virtual_host="/")
    conn.connect()
    return conn


def queue_depth(channel, queue):
    return channel.queue_declare(queue, passive=True)[1]


def wait_depth(channel, queue, expected, timeout=120):
    deadline, depth = time.time() + timeout, -1
    while time.time() < deadline:
        depth = queue_depth(channel, queue)
        if depth >= expected:
            return depth
        time.sleep(0.1)
    raise BenchFailure(f"queue {queue} holds {depth} messages, expected {expected}")


def seed_approvals(conn, table_columns, count, with_workflow):
    """`count` PENDING approvals; returns their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    workflow = str(uuid.uuid4())
    with conn.cursor() as cur:
        if with_workflow:
            cur.execute(
                "insert into workflows (id, name, status, version) values (%s, 'bench-compare', 'ACTIVE', 1)",
                (workflow,),
            )
        for start_at in range(0, count, 1000):
            chunk = ids[start_at:start_at + 1000]
            rows = [(i, workflow, f"request {n}", 100.5, "EUR", str(uuid.uuid4())) for n, i in enumerate(chunk)]
            cur.executemany(
                f"insert into approvals ({table_columns}) values (%s, %s, %s, %s, %s, %s, 'PENDING', 1)", rows
            )
    conn.commit()
    return ids


def decision(approval_id, n):
    return {"approvalId": approval_id, "status": "APPROVED" if n % 2 == 0 else "REJECTED", "reason": "bench-compare"}


# ---------------------------------------------------------------- the project's binaries

def ours_env(extra=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTOMATION_", "DATABASE_", "AMQP_", "JWT_", "API_", "WORKER_"))
        and k not in ("LOG_LEVEL", "LOG_FORMAT", "CORS_ORIGINS", "ENVIRONMENT", "DEBUG", "REGION")
    }
    env.update(
        DATABASE_URL=f"mysql://root@127.0.0.1:3306/{OURS_DB}",
        AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f",
        AUTOMATION_AMQP__PREFIX=PREFIX,
        ENVIRONMENT="development",
        LOG_FORMAT="json",
        JWT_SECRET=JWT_SECRET,
        API_HOST="127.0.0.1",
        # As the container image runs them (Dockerfile): two malloc arenas.
        MALLOC_ARENA_MAX="2",
    )
    env.update(extra or {})
    return env


def ours_cli(*args, extra_env=None, stdin=None):
    result = subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]], env=ours_env(extra_env), cwd=RUN_DIR,
        input=stdin, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise BenchFailure(f"{' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def ours_reset():
    recreate_database(OURS_DB)
    ours_cli("automation-worker", "migrate")
    ours_cli("automation-worker", "topology")


JWT_SECRET = os.environ.get("BENCH_COMPARE_JWT_SECRET") or "bench-compare-" + uuid.uuid4().hex + uuid.uuid4().hex


# ---------------------------------------------------------------- part 1: the worker

def drain(label, database, count_sql, process, events, pending_sql=None):
    """Polls `count_sql` until every event is applied (and `pending_sql`, what is still to be
    sent after the commits, counts 0); returns (seconds, cpu, pss)."""
    # Autocommit: each poll sees what committed since the last (no snapshot of a transaction).
    db = mysql(database)
    cpu = CpuWindow(process.pid)
    first, before, cpu_first = None, 0, None
    seen, progressed, pss = -1, time.time(), 0.0
    next_pss = 0.0
    while True:
        done = scalar(db, count_sql)
        now = time.time()
        if first is None and done > 0:
            first, before, cpu_first = now, done, cpu.snapshot()
        if done >= events and (pending_sql is None or scalar(db, pending_sql) == 0):
            cpu_last = cpu.snapshot()
            break
        if done != seen:
            seen, progressed = done, now
        if now - progressed > STALL_SECS:
            raise BenchFailure(f"{label}: nothing moved for {STALL_SECS} s ({done} of {events} applied)")
        if process.poll() is not None:
            raise BenchFailure(f"{label}: the worker exited with {process.returncode} ({done} of {events} applied)")
        if now >= next_pss:
            pss = max(pss, pss_mib(process_tree(process.pid)))
            next_pss = now + 0.5
        time.sleep(0.02 if done >= events * 0.8 else 0.1)
    pss = max(pss, pss_mib(process_tree(process.pid)))
    db.close()
    if first is None or before >= events:
        raise BenchFailure(f"{label}: the first poll already found every event applied: raise BENCH_COMPARE_EVENTS")
    window = time.time() - first
    seconds = window * events / (events - before)
    return seconds, cpu.per_item(cpu_first, cpu_last, events - before), pss


def worker_ours(run):
    label = f"worker project #{run}"
    ours_reset()
    db = mysql(OURS_DB, autocommit=False)
    ids = seed_approvals(db, "id, workflow_id, title, amount, currency, requester_id, status, version", EVENTS, True)
    say(f"{label}: {EVENTS} approvals seeded; publishing {EVENTS} approval.decided as plain Spring JSON…")
    conn = amqp_connection()
    channel = conn.channel()
    properties = dict(
        content_type="application/json", content_encoding="UTF-8", delivery_mode=2,
        application_headers={"__TypeId__": "com.example.ApprovalDecided"},
    )
    for n, approval_id in enumerate(ids):
        body = json.dumps(decision(approval_id, n), separators=(",", ":"))
        channel.basic_publish(amqp.Message(body, **properties), exchange=f"{PREFIX}.events", routing_key="approval.decided")
    wait_depth(channel, f"{PREFIX}.commands", EVENTS)
    conn.close()
    process = start("automation-worker", [os.path.join(BIN, "automation-worker")],
                    ours_env({"WORKER_PORT": str(free_port())}), RUN_DIR)
    try:
        # The clock stops when every notification has left the outbox too, as in `make bench`.
        seconds, cpu, pss = drain(label, OURS_DB, "select count(*) from inbox where type = 'approval.decided'",
                                  process, EVENTS, pending_sql="select count(*) from outbox")
    finally:
        code = stop(process)
    if code not in (0, None):
        say(f"    warning: the worker exited with {code} after the drain")
    verify_ours(label, db)
    db.close()
    return {"seconds": seconds, "eventsPerSecond": EVENTS / seconds, "cpuMsPerEvent": cpu, "pssMiB": pss}


def verify_ours(label, db):
    db.commit()
    inbox = scalar(db, "select count(*) from inbox where type = 'approval.decided'")
    applied = scalar(db, "select count(*) from inbox where type = 'approval.decided' and outcome = 'applied'")
    decided = scalar(db, "select count(*) from approvals where status in ('APPROVED', 'REJECTED') and version = 2")
    audited, audited_events = (
        scalar(db, "select count(*) from audit_log a join inbox i on i.event_id = a.event_id "
                   "where i.type = 'approval.decided'"),
        scalar(db, "select count(distinct a.event_id) from audit_log a join inbox i on i.event_id = a.event_id "
                   "where i.type = 'approval.decided'"),
    )
    unsent = scalar(db, "select count(*) from outbox")
    if (inbox, applied, decided, audited, audited_events, unsent) != (EVENTS, EVENTS, EVENTS, EVENTS, EVENTS, 0):
        raise BenchFailure(
            f"{label}: not every event was applied exactly once: sent {EVENTS}; inbox {inbox} ({applied} applied); "
            f"approvals decided at version 2: {decided}; audit records {audited} for {audited_events} events; "
            f"outbox {unsent}"
        )
    say(f"    verified: {EVENTS} in the inbox, applied, approvals at version 2, one audit record each, outbox empty")


def peer_env():
    env = dict(os.environ)
    env.update(
        PEER_AMQP_URL="amqp://guest:guest@127.0.0.1:5672//",
        PEER_QUEUE=PEER_QUEUE,
        PEER_MYSQL=f"127.0.0.1:3306:root:{PEER_DB}",
        PEER_EXCHANGE=PEER_EXCHANGE,
        PEER_JWT_SECRET=JWT_SECRET,
        PYTHONPATH=PEERS,
    )
    return env


def peer_reset():
    recreate_database(PEER_DB)
    sys.path.insert(0, PEERS)
    import celery_worker  # noqa: PLC0415 - the peer's schema lives with the peer

    conn = mysql(PEER_DB)
    with conn.cursor() as cur:
        for statement in celery_worker.SCHEMA:
            cur.execute(statement)
    conn.close()


def celery_app():
    sys.path.insert(0, PEERS)
    import celery_worker  # noqa: PLC0415

    return celery_worker.app


def worker_peer(run):
    label = f"worker peer #{run}"
    peer_reset()
    db = mysql(PEER_DB, autocommit=False)
    ids = seed_approvals(db, "id, workflow_id, title, amount, currency, requester_id, status, version", EVENTS, False)
    say(f"{label}: {EVENTS} approvals seeded; sending {EVENTS} approval.decided Celery tasks…")
    app = celery_app()
    with app.producer_or_acquire() as producer:
        for n, approval_id in enumerate(ids):
            app.send_task("approval.decided", args=[decision(approval_id, n)], task_id=str(uuid.uuid4()),
                          producer=producer)
    conn = amqp_connection()
    channel = conn.channel()
    wait_depth(channel, PEER_QUEUE, EVENTS)
    conn.close()
    argv = [sys.executable, "-m", "celery", "-A", "celery_worker", "worker", "--pool=prefork", "--concurrency=2",
            "--prefetch-multiplier=4", "-Q", PEER_QUEUE, "--loglevel=INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"{TAG}@%h"]
    process = start("celery", argv, peer_env(), PEERS)
    try:
        seconds, cpu, pss = drain(label, PEER_DB, "select count(*) from processed_events", process, EVENTS)
    finally:
        code = stop(process)
    if code not in (0, None):
        say(f"    warning: celery exited with {code} after the drain")
    verify_peer(label, db)
    db.close()
    return {"seconds": seconds, "eventsPerSecond": EVENTS / seconds, "cpuMsPerEvent": cpu, "pssMiB": pss}


def verify_peer(label, db):
    db.commit()
    processed = scalar(db, "select count(*) from processed_events")
    applied = scalar(db, "select count(*) from processed_events where outcome = 'applied'")
    decided = scalar(db, "select count(*) from approvals where status in ('APPROVED', 'REJECTED') and version = 2")
    audited = scalar(db, "select count(*) from audit_log")
    audited_events = scalar(db, "select count(distinct event_id) from audit_log")
    if (processed, applied, decided, audited, audited_events) != (EVENTS,) * 5:
        raise BenchFailure(
            f"{label}: not every event was applied exactly once: sent {EVENTS}; processed {processed} "
            f"({applied} applied); approvals decided at version 2: {decided}; audit rows {audited} for "
            f"{audited_events} events"
        )
    say(f"    verified: {EVENTS} processed once, applied, approvals at version 2, one audit row each")


# ---------------------------------------------------------------- part 2: the API

LUA = """-- PATCH /approvals/{id} over the seeded approvals, written by bench/compare.py
local ids = {%(ids)s}
local headers = {["Authorization"] = "Bearer %(token)s", ["Content-Type"] = "application/json"}
local body = '{"status":"APPROVED","reason":"within budget"}'
local n = 0
request = function()
  n = n + 1
  return wrk.format("PATCH", "/approvals/" .. ids[(n %% #ids) + 1], headers, body)
end
"""


def parse_wrk(output):
    def latency(label):
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            raise BenchFailure(f"wrk printed no {label}% latency:\n{output}")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if not rps or not total:
        raise BenchFailure(f"wrk printed no throughput:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requestsPerSecond": float(rps.group(1)),
        "requests": int(total.group(1)),
        "p50Ms": latency("50"),
        "p99Ms": latency("99"),
        "non2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socketErrors": sum(int(g) for g in errors.groups()) if errors else 0,
    }


def wrk(url, script, seconds, process=None):
    """Runs wrk; samples the server's PSS each second meanwhile. Returns (parsed, pss, cpu)."""
    cpu = CpuWindow(process.pid) if process else None
    before = cpu.snapshot() if cpu else None
    argv = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", script, url]
    # wrk shares the two cores too: its CPU is reported beside the sides' (not in their totals).
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pss = 0.0
    while load.poll() is None:
        if process:
            pss = max(pss, pss_mib(process_tree(process.pid)))
        time.sleep(1.0)
    output = load.stdout.read()
    if load.returncode != 0:
        raise BenchFailure(f"wrk failed ({load.returncode}):\n{output}")
    parsed = parse_wrk(output)
    after = cpu.snapshot() if cpu else None
    per = CpuWindow.per_item(before, after, max(parsed["requests"], 1)) if cpu else None
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (done.ru_utime + done.ru_stime - reaped.ru_utime - reaped.ru_stime) * 1000.0
    parsed["wrkCpuMsPerRequest"] = wrk_cpu / max(parsed["requests"], 1)
    return parsed, pss, per


def purge(queue):
    conn = amqp_connection()
    conn.channel().queue_purge(queue)
    conn.close()


def api_run(label, side, run):
    purge(side["queue"])
    parsed, pss, cpu = wrk(side["url"], side["script"], DURATION, side["process"])
    if parsed["non2xx"] or parsed["socketErrors"]:
        raise BenchFailure(f"{label}: {parsed['non2xx']} answers were not 2xx, {parsed['socketErrors']} socket errors")
    conn = amqp_connection()
    depth = wait_depth(conn.channel(), side["queue"], parsed["requests"], timeout=30)
    conn.close()
    say(f"    {parsed['requestsPerSecond']:.0f} req/s, p50 {parsed['p50Ms']:.2f} ms, p99 {parsed['p99Ms']:.2f} ms, "
        f"PSS {pss:.1f} MiB; CPU/request " + ", ".join(f"{k} {v:.3f} ms" for k, v in cpu.items()) +
        f" (wrk {parsed['wrkCpuMsPerRequest']:.3f} ms); {parsed['requests']} answered 202, {depth} events in the queue")
    return {**parsed, "pssMiB": pss, "cpuMsPerRequest": cpu, "queued": depth}


def api_setup():
    """Starts automation-api and the FastAPI peer; returns the two sides."""
    ours_reset()
    db = mysql(OURS_DB, autocommit=False)
    ids = seed_approvals(db, "id, workflow_id, title, amount, currency, requester_id, status, version",
                         API_APPROVALS, True)
    db.close()
    password = uuid.uuid4().hex
    ours_cli("automation-api", "user", "create", "--email", "bench-compare@example.com", "--name", "Bench",
             "--role", "approver", "--password-env", "BENCH_COMPARE_PASSWORD",
             extra_env={"BENCH_COMPARE_PASSWORD": password})
    port = free_port()
    api = start("automation-api", [os.path.join(BIN, "automation-api")], ours_env({"API_PORT": str(port)}), RUN_DIR)
    wait_http(f"http://127.0.0.1:{port}/health", process=api)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/auth/login", method="POST",
        data=json.dumps({"email": "bench-compare@example.com", "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.load(response)["accessToken"]

    conn = amqp_connection()
    channel = conn.channel()
    channel.exchange_declare(PEER_EXCHANGE, "topic", durable=True, auto_delete=False)
    channel.queue_declare(PEER_API_QUEUE, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(PEER_API_QUEUE, PEER_EXCHANGE, "#")
    conn.close()
    peer_port = free_port()
    peer = start("uvicorn", [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--host", "127.0.0.1", "--port",
                             str(peer_port), "--workers", "2"], peer_env(), PEERS)
    wait_http(f"http://127.0.0.1:{peer_port}/openapi.json", process=peer)

    script = os.path.join(RUN_DIR, "patch.lua")
    with open(script, "w") as f:
        f.write(LUA % {"ids": ", ".join(f'"{i}"' for i in ids), "token": token})
    sides = {
        "project": {"url": f"http://127.0.0.1:{port}", "process": api, "queue": f"{PREFIX}.commands"},
        "peer": {"url": f"http://127.0.0.1:{peer_port}", "process": peer, "queue": PEER_API_QUEUE},
    }
    for name, side in sides.items():
        side["script"] = script
        # One PATCH by hand: the route answers 202 (a 401 or 404 here would measure an error path).
        check = urllib.request.Request(
            f"{side['url']}/approvals/{ids[0]}", method="PATCH", data=b'{"status":"APPROVED"}',
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(check, timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        if status != 202:
            raise BenchFailure(f"api {name}: PATCH /approvals/{{id}} answered {status}, not 202")
        say(f"api {name}: warming up (3 s)…")
        wrk(side["url"], script, 3)
    return sides


# ---------------------------------------------------------------- the report

def ratio_line(figure, project, peer, unit, digits=0, floor=0.0):
    """`ratio <figure> project/peer = X.XX× (project A, peer B)`; `n/a` when the peer's figure is
    at or below `floor` (MySQL CPU of a peer that reads nothing per request: noise, not a cost)."""
    fmt = f"{{:.{digits}f}}"
    sides = f"project {fmt.format(project)} {unit}, peer {fmt.format(peer)} {unit}"
    if peer <= floor:
        return f"ratio {figure} project/peer = n/a ({sides}: next to nothing on the peer's side)", None
    value = project / peer
    return f"ratio {figure} project/peer = {value:.2f}× ({sides})", value


def median_of(runs, *path):
    values = []
    for run in runs:
        value = run
        for key in path:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def report(results, load_start):
    lines, summary = [], {"bench": "compare", "repeat": REPEAT, "ratios": {}, "sides": {}}

    def add(key, figure, side_path, unit, digits=0, floor=0.0):
        project = median_of(results[key]["project"], *side_path)
        peer = median_of(results[key]["peer"], *side_path)
        line, value = ratio_line(figure, project, peer, unit, digits, floor)
        lines.append(line)
        summary["ratios"][figure] = None if value is None else round(value, 3)

    if "worker" in results:
        add("worker", "worker throughput", ["eventsPerSecond"], "ev/s")
        for part in ("server", "mysqld", "rabbitmq", "total"):
            if part in results["worker"]["project"][0]["cpuMsPerEvent"]:
                name = "worker process" if part == "server" else part
                add("worker", f"worker CPU/event {name}", ["cpuMsPerEvent", part], "ms", 3)
        add("worker", "worker PSS", ["pssMiB"], "MiB", 1)
        summary["sides"]["worker"] = results["worker"]
        summary["events"] = EVENTS
    if "api" in results:
        add("api", "api throughput", ["requestsPerSecond"], "req/s")
        add("api", "api p50", ["p50Ms"], "ms", 2)
        add("api", "api p99", ["p99Ms"], "ms", 2)
        add("api", "api PSS", ["pssMiB"], "MiB", 1)
        for part in ("server", "mysqld", "rabbitmq", "total"):
            if part in results["api"]["project"][0]["cpuMsPerRequest"]:
                add("api", f"api CPU/request {'server process' if part == 'server' else part}",
                    ["cpuMsPerRequest", part], "ms", 3, floor=0.01)
        wrk_cpu = {side: median_of(results["api"][side], "wrkCpuMsPerRequest") for side in ("project", "peer")}
        lines.append(f"wrk CPU/request (the load generator, on the same two cores): project {wrk_cpu['project']:.3f} ms, "
                     f"peer {wrk_cpu['peer']:.3f} ms")
        summary["sides"]["api"] = results["api"]
        summary["wrk"] = {"threads": THREADS, "connections": CONNECTIONS, "seconds": DURATION}
    load_end = loadavg()
    print()
    print(f"bench-compare: medians of {REPEAT} interleaved runs per side (project = automation-engine, "
          f"peer = Celery / FastAPI)")
    for line in lines:
        print(line)
    print(f"load averages (1, 5, 15 min): {load_start} at the start, {load_end} at the end ({os.cpu_count()} cores)")
    summary["loadAverages"] = {"start": load_start, "end": load_end}
    print(json.dumps(summary, separators=(",", ":")))


# ---------------------------------------------------------------- clean-up and main

def cleanup(keep_logs=False):
    """Removes this run's databases, queues and exchanges (and its logs unless asked to keep
    them); safe to call twice."""
    try:
        conn = mysql()
        with conn.cursor() as cur:
            for name in (OURS_DB, PEER_DB):
                cur.execute(f"drop database if exists `{name}`")
        conn.close()
    except pymysql.MySQLError as error:
        say(f"clean-up: could not drop the databases: {error}")
    # Logs are kept only where there are some: the trap's call after a clean run leaves no folder.
    keep_logs = keep_logs and os.path.isdir(RUN_DIR) and bool(os.listdir(RUN_DIR))
    if os.path.exists(os.path.join(BIN, "automation-worker")):
        try:
            os.makedirs(RUN_DIR, exist_ok=True)
            ours_cli("automation-worker", "topology", "--delete", "--yes")
        except BenchFailure as error:
            say(f"clean-up: {error}")
    try:
        conn = amqp_connection()
        for queue in (PEER_QUEUE, PEER_API_QUEUE):
            channel = conn.channel()
            try:
                channel.queue_delete(queue)
            except amqp.exceptions.AMQPError:
                pass
        for exchange in (PEER_EXCHANGE, PEER_QUEUE):
            channel = conn.channel()
            try:
                channel.exchange_delete(exchange)
            except amqp.exceptions.AMQPError:
                pass
        conn.close()
    except (OSError, amqp.exceptions.AMQPError) as error:
        say(f"clean-up: could not delete the peer's queues: {error}")
    if not keep_logs:
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "cleanup":
        cleanup(keep_logs=True)
        return 0
    for tool in ("wrk",) if "api" in PARTS else ():
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: apt-get install {tool}")
    for binary in ("automation-worker", "automation-api"):
        if not os.path.exists(os.path.join(BIN, binary)):
            sys.exit(f"{os.path.join(BIN, binary)} is missing: cargo build --release --bins")
    os.makedirs(RUN_DIR, exist_ok=True)
    # The peers read their settings from the environment, the driver's import of the Celery app too.
    os.environ.update({k: v for k, v in peer_env().items() if k.startswith("PEER_")})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_start = loadavg()
    say(f"bench-compare {TAG}: {REPEAT} runs per side; worker {EVENTS} events per run, API {DURATION} s per run "
        f"(wrk -t{THREADS} -c{CONNECTIONS}); load {load_start}; logs in {RUN_DIR}")
    results, succeeded = {}, False
    try:
        if "worker" in PARTS:
            results["worker"] = {"project": [], "peer": []}
            for run in range(1, REPEAT + 1):
                for side, fn in (("project", worker_ours), ("peer", worker_peer)):
                    measured = fn(run)
                    cpu = measured["cpuMsPerEvent"]
                    say(f"    {measured['eventsPerSecond']:.0f} ev/s, CPU/event " +
                        ", ".join(f"{k} {v:.3f} ms" for k, v in cpu.items()) + f", PSS {measured['pssMiB']:.1f} MiB")
                    results["worker"][side].append(measured)
        if "api" in PARTS:
            sides = api_setup()
            results["api"] = {"project": [], "peer": []}
            for run in range(1, REPEAT + 1):
                for name in ("project", "peer"):
                    say(f"api {name} #{run}: wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION}s…")
                    results["api"][name].append(api_run(f"api {name} #{run}", sides[name], run))
        report(results, load_start)
        succeeded = True
        return 0
    except BenchFailure as failure:
        say(f"bench-compare failed: {failure}")
        return 1
    finally:
        stop_all()
        if os.environ.get("BENCH_COMPARE_KEEP"):
            say(f"BENCH_COMPARE_KEEP is set: {OURS_DB}, {PEER_DB} and the queues of {PREFIX} are left")
        else:
            cleanup(keep_logs=not succeeded)
        if not succeeded:
            say(f"the processes' logs are in {RUN_DIR}")


if __name__ == "__main__":
    sys.exit(main())
