#!/usr/bin/env bash
# The TLS stack is rustls on ring only: no OpenSSL, no aws-lc (../shared/DEPENDENCIES.md).
set -euo pipefail
status=0
for crate in aws-lc-sys aws-lc-rs openssl-sys; do
  if cargo tree --workspace --all-features -i "$crate" >/dev/null 2>&1; then
    echo "error: $crate is in the dependency graph; the stack must stay rustls + ring" >&2
    cargo tree --workspace --all-features -i "$crate" | head -20 >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "dependencies: rustls on ring only (no aws-lc, no OpenSSL)"
exit "$status"
