#!/usr/bin/env bash
# `make drill-dr`: the disaster-recovery drill (worker/tests/drill_dr): two regions on this
# machine (each its own MariaDB, RabbitMQ, API and workers; the DR database a GTID replica of the
# primary's), load in the primary, the primary SIGKILLed, scripts/failover.sh, load in DR,
# scripts/failback.sh prepare and switch. Prints the TALLY lines (RPO, RTO, applied twice) and
# fails on anything applied twice, lost once the primary is back, or a broken audit chain.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null 2>&1 || { echo "installing jq (the DR scripts read JSON with it)…"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
status=0
# --workspace builds both binaries (the drill starts each region's API and workers from them),
# with make test's features so CI reuses its build (the fault hooks stay inert: nothing sets them).
cargo nextest run --workspace --features automation-worker/fault-injection --profile drill -E 'binary(drill_dr)' 2>&1 |
  tee .local/drill-dr.log || status=$?
echo
echo "== tallies =="
grep -h "TALLY" .local/drill-dr.log | sed 's/^ *//' || true
exit "$status"
