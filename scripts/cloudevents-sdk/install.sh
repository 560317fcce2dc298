#!/usr/bin/env bash
# Installs the CloudEvents SDK client (requirements.txt) into .local/cloudevents-sdk, once per
# change of the pins. `make deps` (and so `make test`) runs it; the test finds the interpreter at
# .local/cloudevents-sdk/venv/bin/python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=scripts/cloudevents-sdk
dir=.local/cloudevents-sdk
stamp=$(sha256sum "$here/requirements.txt" | cut -c1-16)
if [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ] && [ -x "$dir/venv/bin/python3" ]; then
  exit 0
fi
echo "installing the CloudEvents Python SDK for the binding tests into $dir …"
rm -rf "$dir"
mkdir -p "$dir"
python3 -m venv "$dir/venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/venv/bin/pip" install -q -r "$here/requirements.txt" \
  || { echo "error: could not install $here/requirements.txt from PyPI into $dir" >&2; exit 1; }
echo "$stamp" >"$dir/stamp"
