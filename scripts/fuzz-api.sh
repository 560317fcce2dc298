#!/usr/bin/env bash
# `make fuzz-api`: schemathesis against the API's own OpenAPI document, with a real worker, broker
# and database behind it. Passes when no request gets a server error and every response matches
# the documented schema and content type. Uses a database and broker prefix of its own and
# removes them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.local/fuzz-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $venv…"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis==4.32.5'
fi
cargo build --workspace --bins -q

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run_id="$(date +%s)$$"
export DATABASE_URL="mysql://root@127.0.0.1:3306/fuzz_${run_id}"
export AUTOMATION_AMQP__PREFIX="fuzz${run_id}"
export API_HOST=127.0.0.1 API_PORT="$(free_port)" WORKER_PORT="$(free_port)"
export LOG_FORMAT=json LOG_LEVEL="${FUZZ_LOG_LEVEL:-warn}"
export JWT_SECRET="fuzzing-secret-fuzzing-secret-fuzzing-secret"
logs=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  target/debug/automation-worker topology --delete --yes >/dev/null 2>&1 || true
  mariadb -uroot -h127.0.0.1 -e "drop database if exists fuzz_${run_id}" 2>/dev/null || true
}
trap cleanup EXIT
keep_logs() { [ -n "${FUZZ_KEEP_LOGS:-}" ] && cp -r "$logs" "$FUZZ_KEEP_LOGS"; return 0; }

target/debug/automation-worker migrate >/dev/null
target/debug/automation-worker topology >/dev/null
target/debug/automation-worker >"$logs/worker.log" 2>&1 & pids+=($!)
target/debug/automation-api >"$logs/api.log" 2>&1 & pids+=($!)
base="http://127.0.0.1:${API_PORT}"
for _ in $(seq 1 100); do
  curl -fsS "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$base/health/ready" >/dev/null || { echo "the API did not become ready; its log:"; cat "$logs/api.log"; exit 1; }

export FUZZ_PASSWORD="fuzzing admin password"
target/debug/automation-api user create --email fuzz@example.com --name Fuzz --role admin --password-env FUZZ_PASSWORD >/dev/null
token=$(curl -fsS -X POST "$base/auth/login" -H 'content-type: application/json' \
  -d '{"email":"fuzz@example.com","password":"fuzzing admin password"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')

# Logout is left out: it would revoke the token every other request uses.
status=0
# Hypothesis keeps its caches under .local; no example database, so a run depends on the seed only.
export HYPOTHESIS_STORAGE_DIRECTORY="$PWD/.local/hypothesis"
"$venv/bin/schemathesis" run "$base/openapi.json" \
  --generation-database none \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance,content_type_conformance \
  --exclude-path /auth/logout \
  --max-examples "${FUZZ_EXAMPLES:-40}" \
  --request-timeout 40 \
  --seed "${FUZZ_SEED:-20261122}" || status=$?
if grep -q '"level":"ERROR"' "$logs/api.log"; then
  echo "the API logged errors during the run:"; grep '"level":"ERROR"' "$logs/api.log" | head -20
  status=1
fi
keep_logs
exit "$status"
