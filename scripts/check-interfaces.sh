#!/usr/bin/env bash
# `make check-interfaces` (part of `make check`): the committed interface documents, checked with
# the tools the client teams use. Installs them (pinned in scripts/interfaces/) into
# .local/interfaces on first use or when the pins change. Prints one PASS/FAIL line per check
# with its counts and exits 1 when any check fails.
#   schemas/openapi.json   openapi-spec-validator; Spectral (spectral:oas);
#                          openapi-typescript, then tsc --strict on the types and a typed client
#   schemas/asyncapi.json  @asyncapi/parser
#   schemas/events/*.json  quicktype Java classes compiled with javac (Jackson from Debian), and
#                          each schema's example through those classes and Jackson's defaults,
#                          validated against the schemas (Ajv)
set -euo pipefail
cd "$(dirname "$0")/.."

pins=scripts/interfaces
tools=.local/interfaces
work=$tools/work
jackson=/usr/share/java/jackson-databind.jar:/usr/share/java/jackson-core.jar:/usr/share/java/jackson-annotations.jar

install() {
  local stamp
  stamp=$(cat "$pins/package.json" "$pins/package-lock.json" "$pins/requirements.txt" | sha256sum | cut -c1-16)
  if [ "$(cat "$tools/.stamp" 2>/dev/null)" = "$stamp" ]; then return; fi
  echo "installing the interface tools into $tools (npm, PyPI; pinned in $pins)…"
  mkdir -p "$tools"
  cp "$pins/package.json" "$pins/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q -r "$pins/requirements.txt"
  echo "$stamp" >"$tools/.stamp"
}
if [ ! -f /usr/share/java/jackson-databind.jar ]; then
  echo "installing Jackson (Debian's libjackson2-databind-java) for the Java check…"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libjackson2-databind-java >/dev/null \
    || { echo "FAIL jackson: apt-get install libjackson2-databind-java"; exit 1; }
fi
command -v javac >/dev/null || { echo "FAIL javac: a JDK is needed (apt-get install default-jdk-headless)"; exit 1; }
install
rm -rf "$work" && mkdir -p "$work"
cp "$pins/asyncapi.mjs" "$pins/validate.mjs" "$tools/"

failed=0
report() { # report <name> <ok?> <counts>
  if [ "$2" = 0 ]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; failed=$((failed + 1)); fi
}
count() { grep -c -- "$1" "$2" || true; }

# OpenAPI: the validator of the specification.
if "$tools/venv/bin/openapi-spec-validator" --validation-errors all schemas/openapi.json >"$work/validator.txt" 2>&1; then
  report openapi-spec-validator 0 "0 errors (schemas/openapi.json, OpenAPI $(python3 -c 'import json;print(json.load(open("schemas/openapi.json"))["openapi"])'))"
else
  sed 's/^/  /' "$work/validator.txt" | head -40
  report openapi-spec-validator 1 "$(count 'Validation Error' "$work/validator.txt") errors"
fi

# OpenAPI: Spectral's OpenAPI ruleset, every severity counted.
echo 'extends: ["spectral:oas"]' >"$work/spectral.yaml"
"$tools/node_modules/.bin/spectral" lint -q -r "$work/spectral.yaml" -f json -o "$work/spectral.json" schemas/openapi.json >/dev/null 2>&1 || true
spectral=$(node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  for (const x of r) console.error(`  ${["error","warning","info","hint"][x.severity]} ${x.code} ${x.path.join(".")}: ${x.message}`);
  const n = (s) => r.filter((x) => x.severity === s).length;
  console.log(`${n(0)} ${n(1)}`);' "$work/spectral.json" 2>"$work/spectral.txt") || spectral="? ?"
head -40 "$work/spectral.txt"
read -r errors warnings <<<"$spectral"
report "spectral (spectral:oas)" "$([ "$errors" = 0 ] && echo 0 || echo 1)" "$errors errors, $warnings warnings"

# OpenAPI: the React team's generator, and the types under tsc --strict with a typed client.
mkdir -p "$work/ts"
cp "$pins/client.ts" "$pins/tsconfig.json" "$work/ts/"
if "$tools/node_modules/.bin/openapi-typescript" schemas/openapi.json -o "$work/ts/api.d.ts" >"$work/openapi-typescript.txt" 2>&1; then
  (cd "$work/ts" && ../../node_modules/.bin/tsc -p tsconfig.json >../tsc.txt 2>&1) || true
  errors=$(count 'error TS' "$work/tsc.txt")
  sed 's/^/  /' "$work/tsc.txt" | head -40
  report "openapi-typescript + tsc --strict" "$errors" "$errors errors ($(grep -c '^    "/' "$work/ts/api.d.ts") paths typed, client.ts compiled)"
else
  sed 's/^/  /' "$work/openapi-typescript.txt"
  report "openapi-typescript + tsc --strict" 1 "openapi-typescript failed"
fi

# AsyncAPI: the official parser.
if node "$tools/asyncapi.mjs" schemas/asyncapi.json >"$work/asyncapi.txt" 2>&1; then ok=0; else ok=1; fi
grep -v '^asyncapi-parser:' "$work/asyncapi.txt" | grep -v ' info \| hint ' | head -40 || true
report "@asyncapi/parser" "$ok" "$(grep '^asyncapi-parser:' "$work/asyncapi.txt" | sed 's/^asyncapi-parser: //' || echo 'did not run')"

# Event schemas: the Spring team's Java classes, compiled.
java=$work/java
mkdir -p "$java/src/dev/automation/events" "$java/classes" "$java/out"
# The command docs/events.md gives. Converter.java, quicktype's optional helper, is left out: Debian's
# jackson-databind 2.14 declares `writeValueAsString ... throws IOException` where Maven's jar
# declares JsonProcessingException, so it compiles against Maven's Jackson only. The classes
# themselves carry the Jackson annotations and are compiled and used below.
if "$tools/node_modules/.bin/quicktype" --lang java --src-lang schema --package dev.automation.events \
  --out "$java/src/dev/automation/events/Events.java" schemas/events/*.json >"$work/quicktype.txt" 2>&1; then
  sources=$(find "$java/src" -name '*.java' ! -name Converter.java | sort)
  classes=$(echo "$sources" | wc -l)
  # shellcheck disable=SC2086 # one argument per source file
  if javac -Xlint:none -d "$java/classes" -cp "$jackson" $sources "$pins/java/RoundTrip.java" >"$work/javac.txt" 2>&1; then
    report "quicktype Java + javac" 0 "0 errors, $classes classes from $(ls schemas/events/*.json | wc -l) schemas"
    # Each example through the classes and Jackson's defaults, then against the schemas.
    if java -cp "$java/classes:$jackson" RoundTrip "$java/out" schemas/events/*.json >"$work/roundtrip.txt" 2>&1 \
      && node "$tools/validate.mjs" schemas/events "$java/out" >>"$work/roundtrip.txt" 2>&1; then ok=0; else ok=1; fi
    grep -v '^jackson-round-trip:' "$work/roundtrip.txt" | head -40 || true
    report "Jackson round trip (Ajv)" "$ok" "$(grep '^jackson-round-trip:' "$work/roundtrip.txt" | sed 's/^jackson-round-trip: //' || echo 'did not run')"
    # What Jackson wrote is committed (schemas/examples/jackson/), and the worker's integration
    # test publishes exactly those bodies through the broker: here they must still be what the
    # classes write today. UPDATE_SCHEMAS=1 rewrites them.
    committed=schemas/examples/jackson
    if [ "${UPDATE_SCHEMAS:-}" = 1 ]; then
      mkdir -p "$committed"
      for f in "$java/out"/*.json; do python3 -m json.tool --sort-keys "$f" >"$committed/$(basename "$f")"; done
    fi
    drift=$(python3 - "$java/out" "$committed" <<'PY'
import json, pathlib, sys
made, kept = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
names = sorted({p.name for p in made.glob("*.json")} | {p.name for p in kept.glob("*.json")})
for name in names:
    a, b = made / name, kept / name
    if not a.exists() or not b.exists() or json.loads(a.read_text()) != json.loads(b.read_text()):
        print(name)
PY
)
    if [ -z "$drift" ]; then
      report "Jackson output committed" 0 "$(ls "$committed"/*.json | wc -l) bodies in $committed match what the classes write"
    else
      echo "  differs from $committed (run UPDATE_SCHEMAS=1 scripts/check-interfaces.sh): $drift"
      report "Jackson output committed" 1 "$(echo "$drift" | wc -l) differ"
    fi
  else
    sed 's/^/  /' "$work/javac.txt" | head -40
    report "quicktype Java + javac" 1 "$(count ' error: ' "$work/javac.txt") errors"
  fi
else
  sed 's/^/  /' "$work/quicktype.txt"
  report "quicktype Java + javac" 1 "quicktype failed"
fi

if [ "$failed" -gt 0 ]; then
  echo "check-interfaces: $failed check(s) failed"
  exit 1
fi
echo "check-interfaces: every check passed"
