#!/usr/bin/env bash
# `make bench-compare`: builds the release binaries and the peers' virtualenv, then runs
# bench/compare.py with it. Whatever happens, the trap removes this run's databases, queues and
# exchanges (compare.py does too; the trap covers a driver that was killed).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
export BENCH_COMPARE_TAG=${BENCH_COMPARE_TAG:-benchcmp$$}
venv=.local/bench-peers

command -v wrk >/dev/null 2>&1 || {
  echo "installing wrk (Debian's package) for the API runs…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
}

# The virtualenv is made again when requirements.txt changed since it was made.
stamp=$venv/.requirements.sha256
want=$(sha256sum bench/peers/requirements.txt | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "creating the peers' virtualenv in $venv (bench/peers/requirements.txt)…" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/peers/requirements.txt
  echo "$want" >"$stamp"
fi

echo "building the release binaries (cargo build --release --bins)…" >&2
cargo build --release --bins --quiet

cleanup() { "$venv/bin/python" bench/compare.py cleanup || true; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$venv/bin/python" bench/compare.py
