#!/usr/bin/env bash
# Known vulnerabilities, unsound and unmaintained crates in the dependency graph: cargo-deny
# against the RustSec advisory database; deny.toml holds the reasoned exceptions. The database is
# fetched (GitHub) first; without a network the copy fetched last is used and its date printed.
# With no copy at all the check cannot run: it says so loudly and passes, unless
# ADVISORIES_REQUIRED=1, which makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
dbs="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
copy() { find "$dbs" -mindepth 1 -maxdepth 1 -type d -name 'advisory-db-*' 2>/dev/null | head -1; }

if cargo deny --log-level error fetch db; then
  fetched=yes
else
  fetched=no
fi
db="$(copy)"
if [ -z "$db" ]; then
  echo "warning: advisories NOT checked: the RustSec database could not be fetched and there is no copy in $dbs" >&2
  [ "${ADVISORIES_REQUIRED:-0}" = 1 ] && exit 1
  exit 0
fi
date="$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo unknown)"
if [ "$fetched" = no ]; then
  echo "warning: the RustSec database could not be fetched; checking against the copy of $date" >&2
fi
if [ "$date" != unknown ] && [ "$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))" -gt 90 ]; then
  echo "warning: the advisory database is from $date, more than 90 days old: newer advisories are not seen" >&2
fi
cargo deny --offline --log-level error check advisories
echo "advisories: none outside deny.toml (database of $date)"
