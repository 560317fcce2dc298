#!/usr/bin/env bash
# Failover to the DR region, when the primary region is lost. docs/operations.md, "Disaster
# recovery: failover", is the runbook; the settings are listed atop scripts/dr-lib.sh.
#
#   scripts/failover.sh [--local | --dry-run] [--json] [--force] [--resume] [--env-out FILE]
#
# 1. checks: the DR cluster is the DR region's; the DR database is server DR_DATABASE_SERVER_ID
#    and a replica (a primary already is refused, exit 5, unless --resume); it must not still be
#    connected to a live primary (refused unless --force: then the old primary must be fenced by
#    hand, or two primaries take writes).
# 2. promotes the DR database: stops taking from the old primary, waits until everything it
#    received is applied, stops and forgets replication, read_only off.
# 3. the broker: removes the shovel from the primary, and replays the copies of the primary's
#    events kept in the standby queue into the DR events exchange (the inbox skips those the
#    replica had applied; this is what brings the RPO of queued events to the shovel's lag).
# 4. starts the DR workers (KEDA unpaused, DR_WORKER_REPLICAS to start from) and gives the API
#    two replicas; --local runs DR_LOCAL_SCALE instead, --dry-run prints the kubectl commands.
# 5. --env-out FILE: writes DATABASE_URL/AMQP_URL of the now-active region (the application's
#    URL, DR_DATABASE_URL if set, else the admin URL) for whatever starts processes by hand.
# Then point the clients' DNS at the DR region's ingress (not done here: your DNS provider).
source "$(dirname "$0")/dr-lib.sh"

ENV_OUT=""
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --env-out) ENV_OUT=${args[$((i + 1))]:-} ;;
    --local | --dry-run | --json | --force | --resume | -h | --help) ;;
    *) [ "${args[$((i - 1))]:-}" = --env-out ] || { say "unknown argument ${args[$i]}"; usage >&2; exit 2; } ;;
  esac
done
parse_common "$@"
need DR_DATABASE_ADMIN_URL
need DR_DATABASE_SERVER_ID
need DR_AMQP_URL
[ "$MODE" = kubectl ] && need DR_CONTEXT
say "failover to $DR_REGION (mode $MODE)"

preflight() {
  check_cluster "${DR_CONTEXT:-}" "$DR_REGION"
  local status role id io
  status=$(db_status "$DR_DATABASE_ADMIN_URL") || return 1
  role=$(jq -r .role <<<"$status")
  id=$(jq -r .server_id <<<"$status")
  io=$(jq -r '.io_running // "none"' <<<"$status")
  say "    DR database: server $id, $role, replica io thread: $io, $(jq -r '.seconds_behind_source // "-"' <<<"$status") s behind"
  if [ "$MODE" != dry-run ] && [ "$id" != "$DR_DATABASE_SERVER_ID" ]; then
    say "    DR_DATABASE_ADMIN_URL reaches server $id, not DR_DATABASE_SERVER_ID=$DR_DATABASE_SERVER_ID: wrong database"
    return 5
  fi
  if [ "$role" = primary ] && [ "$RESUME" != 1 ]; then
    say "    the DR database is a primary already: a failover ran before? (--resume goes on with the steps after the promotion)"
    return 5
  fi
  if [ "$io" = Yes ] && [ "$FORCE" != 1 ]; then
    say "    the DR database is still connected to the primary: the primary region is not lost."
    say "    For a planned switch use scripts/failback.sh in the other direction; --force if it must be now"
    return 5
  fi
}

promote() {
  local status
  status=$(db_status "$DR_DATABASE_ADMIN_URL") || return 1
  if [ "$(jq -r .role <<<"$status")" = primary ]; then
    say "    already promoted (--resume)"
    return 0
  fi
  local force=()
  [ "$FORCE" = 1 ] && force=(--force)
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr promote --expect-server-id $DR_DATABASE_SERVER_ID ${force[*]}"
    return 0
  fi
  local report
  report=$(worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" promote --expect-server-id "$DR_DATABASE_SERVER_ID" "${force[@]}" --json) || return $?
  say "    promoted: applied up to $(jq -r .applied_gtid <<<"$report") (waited $(jq -r .waited_ms <<<"$report") ms for the applier)"
}

broker() {
  if [ -n "${DR_RABBITMQCTL:-}" ]; then
    # Gone with the primary anyway; removed so it does not copy from it if it comes back.
    if [ "$MODE" = dry-run ]; then
      say "    would run: $DR_RABBITMQCTL clear_parameter shovel $(shovel_name)"
    else
      # shellcheck disable=SC2086 # DR_RABBITMQCTL is a command line
      $DR_RABBITMQCTL clear_parameter shovel "$(shovel_name)" >/dev/null 2>&1 || say "    no shovel $(shovel_name) to remove"
    fi
  else
    say "    DR_RABBITMQCTL is unset: remove the shovel $(shovel_name) on the DR broker by hand"
  fi
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr replay"
    return 0
  fi
  local report
  report=$(worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" replay --json) || return $?
  say "    replayed $(jq -r .replayed <<<"$report") copies of the primary's events in $(jq -r .ms <<<"$report") ms"
}

start_region() {
  scale "$DR_REGION" "${DR_CONTEXT:-}" worker "$DR_WORKER_REPLICAS"
  scale "$DR_REGION" "${DR_CONTEXT:-}" api 2
}

write_env() {
  [ -n "$ENV_OUT" ] || return 0
  umask 077
  printf 'DATABASE_URL=%s\nAMQP_URL=%s\nREGION=%s\n' "${DR_DATABASE_URL:-$DR_DATABASE_ADMIN_URL}" "$DR_AMQP_URL" "$DR_REGION" >"$ENV_OUT"
  say "    wrote $ENV_OUT"
}

step "preflight: the DR cluster and database are the ones named, and a replica" preflight
step "promote the DR database" promote
step "broker: remove the shovel, replay the primary's events kept in DR" broker
step "start the DR workers and API" start_region
step "point the configuration at the DR region" write_env
summary done
