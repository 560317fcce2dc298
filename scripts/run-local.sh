#!/usr/bin/env bash
# `make run`: migrations, topology, then the API and the worker in the foreground against the
# local RabbitMQ and MariaDB. Ctrl-C (or either process exiting) stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${BIN_DIR:-target/debug}
export DATABASE_URL=${DATABASE_URL:-mysql://root@127.0.0.1:3306/automation}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export LOG_FORMAT=${LOG_FORMAT:-pretty}

"$bin/automation-worker" migrate
"$bin/automation-worker" topology

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

"$bin/automation-worker" & pids+=($!)
"$bin/automation-api" & pids+=($!)

cat <<MSG

  automation-engine is running:
    API     http://127.0.0.1:${API_PORT:-8000}   (docs: /docs, health: /health)
    worker  http://127.0.0.1:${WORKER_PORT:-8001}/readiness
  First admin:  $bin/automation-api user create --email admin@example.com --name Admin --role admin
  Ctrl-C stops both.

MSG
# Whichever stops first brings the other down with it.
wait -n "${pids[@]}"
