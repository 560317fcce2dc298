#!/usr/bin/env bash
# `make chaos`: the fault suite (worker/tests/chaos, api/tests/chaos). Each scenario prints a
# TALLY line (sent, confirmed, applied, duplicated, lost, dead-lettered) and fails on anything
# lost or applied twice. Scenarios that stop a service run private RabbitMQ/MariaDB instances on
# their own ports and data directories, and stop what they started, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
cargo nextest run --workspace --features automation-worker/fault-injection --profile chaos -E 'binary(chaos)' 2>&1 | tee .local/chaos.log || status=$?
echo
echo "== tallies =="
grep -h "TALLY" .local/chaos.log | sed 's/^ *//' || true
exit "$status"
