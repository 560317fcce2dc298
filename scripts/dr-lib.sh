# Shared by scripts/failover.sh, scripts/failback.sh and scripts/dr-standby.sh (sourced, not run):
# options, progress, the JSON summary, and the three ways each step reaches a region (kubectl,
# --local, --dry-run). docs/operations.md, "Disaster recovery", is the runbook they follow.
#
# What every script reads from the environment (a file of these, `set -a; . dr.env`, is handy):
#   PRIMARY_REGION, DR_REGION          region names (default eu-west-1, eu-central-1): the value of
#                                      REGION in each cluster's ConfigMap, checked before acting
#   PRIMARY_CONTEXT, DR_CONTEXT        kubectl contexts of the two clusters (kubectl mode)
#   NAMESPACE                          default automation
#   PRIMARY_DATABASE_ADMIN_URL, DR_DATABASE_ADMIN_URL
#                                      mysql://admin:password@host:3306 of each region's database
#                                      (an administrator: stops replication, sets read_only)
#   PRIMARY_DATABASE_SERVER_ID, DR_DATABASE_SERVER_ID
#                                      each database's @@server_id: a command on the wrong server
#                                      is refused (exit 5)
#   PRIMARY_AMQP_URL, DR_AMQP_URL      each region's broker, as the worker's user (tagged
#                                      `impersonator` there: the replay keeps each event's user_id)
#   PRIMARY_RABBITMQCTL, DR_RABBITMQCTL
#                                      how to run rabbitmqctl on each broker, e.g.
#                                      "kubectl --context X -n rabbitmq exec rabbitmq-server-0 -- rabbitmqctl"
#                                      or (--local) "rabbitmqctl -n rabbit@host"
#   AUTOMATION_AMQP__PREFIX            default automation
#   AUTOMATION_WORKER_BIN              the automation-worker binary (default: the one in PATH)
#   DR_WORKER_REPLICAS                 workers to start in the region taking over (default 2)
#   DR_LOCAL_SCALE                     --local: a command run as `$DR_LOCAL_SCALE REGION COMPONENT
#                                      REPLICAS` for each scaling step (the drill's hook); unset,
#                                      the step is printed and skipped
# Exit codes: 0 done, 1 a step failed (the output says which; steps before it are done, re-run
# with --resume after fixing), 2 usage, 3 configuration missing, 5 refused by a safety check.

set -euo pipefail

MODE=kubectl
JSON=0
FORCE=0
RESUME=0
NAMESPACE=${NAMESPACE:-automation}
PRIMARY_REGION=${PRIMARY_REGION:-eu-west-1}
DR_REGION=${DR_REGION:-eu-central-1}
PREFIX=${AUTOMATION_AMQP__PREFIX:-automation}
WORKER_BIN=${AUTOMATION_WORKER_BIN:-automation-worker}
DR_WORKER_REPLICAS=${DR_WORKER_REPLICAS:-2}
STEP=0
STEPS_JSON=()
SCRIPT_STARTED=$(date +%s%N)

# The script's own header comment, without the #.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

# Progress goes to stderr; stdout carries the summary (JSON with --json).
say() { printf '%s\n' "$*" >&2; }
die() {
  local code=$1
  shift
  say "error: $*"
  summary "failed" "$*"
  exit "$code"
}
need() { [ -n "${!1:-}" ] || die 3 "$1 is not set (see the top of scripts/dr-lib.sh)"; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# step "what" -- runs the rest of the arguments as one step, timed, numbered.
step() {
  local what=$1
  shift
  STEP=$((STEP + 1))
  say "[$STEP] $what"
  local started
  started=$(now_ms)
  local status=0
  "$@" || status=$?
  local took=$(( $(now_ms) - started ))
  STEPS_JSON+=("$(jq -cn --arg step "$what" --argjson ms "$took" --argjson status "$status" '{step: $step, ms: $ms, status: $status}')")
  if [ "$status" -eq 5 ]; then
    die 5 "step $STEP ($what) refused by a safety check; this step changed nothing"
  elif [ "$status" -ne 0 ]; then
    die "$status" "step $STEP ($what) failed with exit $status; the steps before it are done"
  fi
  say "    done in ${took} ms"
}

summary() {
  local outcome=$1 message=${2:-}
  local total=$(( ($(date +%s%N) - SCRIPT_STARTED) / 1000000 ))
  if [ "$JSON" = 1 ]; then
    printf '%s\n' "${STEPS_JSON[@]+"${STEPS_JSON[@]}"}" | jq -cs --arg outcome "$outcome" --arg message "$message" \
      --arg mode "$MODE" --argjson ms "$total" --arg script "$(basename "$0")" \
      '{script: $script, outcome: $outcome, message: $message, mode: $mode, ms: $ms, steps: .}'
  elif [ "$outcome" = done ]; then
    printf '%s: done in %s ms (%s steps, mode %s)\n' "$(basename "$0")" "$total" "$STEP" "$MODE"
  fi
}

parse_common() {
  for arg in "$@"; do
    case "$arg" in
      --local) MODE=local ;;
      --dry-run) MODE=dry-run ;;
      --json) JSON=1 ;;
      --force) FORCE=1 ;;
      --resume) RESUME=1 ;;
      -h | --help) usage; exit 0 ;;
      --*) ;;
      *) ;;
    esac
  done
  for tool in jq; do
    command -v "$tool" >/dev/null 2>&1 || die 3 "$tool is needed (apt-get install $tool)"
  done
  if [ "$MODE" != dry-run ]; then
    command -v "$WORKER_BIN" >/dev/null 2>&1 || [ -x "$WORKER_BIN" ] ||
      die 3 "AUTOMATION_WORKER_BIN: $WORKER_BIN is not an executable (build it: cargo build -p automation-worker)"
  fi
}

# Runs a command, or in --dry-run prints it.
run() {
  if [ "$MODE" = dry-run ]; then
    say "    would run: $*"
  else
    "$@"
  fi
}

# worker_dr DATABASE_URL AMQP_URL dr ARGS...: the CLI against one region, JSON on stdout.
worker_dr() {
  local db=$1 amqp=$2
  shift 2
  DATABASE_URL=$db AMQP_URL=$amqp AUTOMATION_AMQP__PREFIX=$PREFIX LOG_FORMAT=json "$WORKER_BIN" dr "$@"
}

# The database's role and identity (read-only: also run in --dry-run, where the binary is there).
db_status() {
  local db=$1
  if [ "$MODE" = dry-run ] && ! command -v "$WORKER_BIN" >/dev/null 2>&1 && [ ! -x "$WORKER_BIN" ]; then
    echo '{"role":"unknown (dry run without the binary)","server_id":0}'
    return 0
  fi
  worker_dr "$db" "amqp://unused" status --json
}

# The cluster must be the region's: its ConfigMap's REGION says so.
check_cluster() {
  local context=$1 region=$2
  [ "$MODE" = kubectl ] || return 0
  command -v kubectl >/dev/null 2>&1 || die 3 "kubectl is needed (or --local / --dry-run)"
  local found
  found=$(kubectl --context "$context" -n "$NAMESPACE" get configmap -l app.kubernetes.io/component=config \
    -o jsonpath='{.items[*].data.REGION}' 2>/dev/null) || die 5 "kubectl --context $context cannot read the ConfigMaps of namespace $NAMESPACE"
  case " $found " in
    *" $region "*) ;;
    *) die 5 "context $context is not region $region (its ConfigMaps say REGION=${found:-nothing}): wrong cluster" ;;
  esac
}

# scale REGION CONTEXT COMPONENT REPLICAS: workers through KEDA (pause at 0, or unpause and let it
# scale from REPLICAS), the API with kubectl scale.
scale() {
  local region=$1 context=$2 component=$3 replicas=$4
  case "$MODE" in
    local)
      if [ -n "${DR_LOCAL_SCALE:-}" ]; then
        $DR_LOCAL_SCALE "$region" "$component" "$replicas"
      else
        say "    --local: $region $component to $replicas replicas is yours to do (DR_LOCAL_SCALE is unset)"
      fi
      ;;
    dry-run | kubectl)
      local k=(kubectl --context "$context" -n "$NAMESPACE")
      if [ "$component" = worker ] && [ "$replicas" = 0 ]; then
        run "${k[@]}" annotate scaledobject automation-worker autoscaling.keda.sh/paused-replicas=0 --overwrite
        run "${k[@]}" scale deployment automation-worker --replicas=0
      elif [ "$component" = worker ]; then
        run "${k[@]}" annotate scaledobject automation-worker autoscaling.keda.sh/paused-replicas-
        run "${k[@]}" scale deployment automation-worker --replicas="$replicas"
        [ "$MODE" = dry-run ] || run "${k[@]}" rollout status deployment automation-worker --timeout=5m
      else
        run "${k[@]}" scale deployment automation-api --replicas="$replicas"
        if [ "$replicas" != 0 ] && [ "$MODE" != dry-run ]; then
          run "${k[@]}" rollout status deployment automation-api --timeout=5m
        fi
      fi
      ;;
  esac
}

# The shovel that copies the primary's events to the standby, set on the standby's broker.
shovel_name() { echo "${PREFIX}-dr-standby"; }

# mysql://user:password@host:port/db -> the client options of mariadb/mysql (and mariadb-dump).
client_options() {
  local url=$1
  local rest=${url#mysql://}
  local credentials=${rest%%@*} address=${rest#*@}
  address=${address%%/*}
  address=${address%%\?*}
  local user=${credentials%%:*} password=""
  [ "$credentials" != "$user" ] && password=${credentials#*:}
  local host=${address%%:*} port=3306
  [ "$address" != "$host" ] && port=${address#*:}
  printf -- '--host=%s\n--port=%s\n--user=%s\n' "$host" "$port" "$user"
  [ -n "$password" ] && printf -- '--password=%s\n' "$password"
  return 0
}
