#!/usr/bin/env bash
# Makes (or checks) the DR region a warm standby of the primary. docs/operations.md, "Disaster
# recovery: the standby"; the settings are listed atop scripts/dr-lib.sh.
#
#   scripts/dr-standby.sh [--local | --dry-run] [--json] [--replicate] [--retention-ms N]
#
# 1. the DR database must be a running replica of the primary (--replicate makes it one with
#    `dr replicate-from`, GTID auto-positioning; needs PRIMARY_DATABASE_HOST_FOR_DR,
#    PRIMARY_REPLICATION_USER, PRIMARY_REPLICATION_PASSWORD). A fresh replica needs the primary's
#    binary logs from the start, or a seed (scripts/failback.sh prepare, the other way round).
# 2. the copy of every event: the queue <prefix>.dr.outbound on the primary's broker (bound like
#    the work queues), the standby queue <prefix>.dr.inbound on the DR broker (copies kept
#    --retention-ms, default one hour), and a dynamic shovel on the DR broker from the first to
#    the second (ack on confirm: a copy leaves the primary only once DR has it on disk).
# Run it again after every release (new event types get their bindings) and after a failback.
source "$(dirname "$0")/dr-lib.sh"

REPLICATE=0
RETENTION_MS=3600000
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --replicate) REPLICATE=1 ;;
    --retention-ms) RETENTION_MS=${args[$((i + 1))]:-} ;;
    --local | --dry-run | --json | --force | --resume | -h | --help) ;;
    *) [ "${args[$((i - 1))]:-}" = --retention-ms ] || { say "unknown argument ${args[$i]}"; usage >&2; exit 2; } ;;
  esac
done
parse_common "$@"
need DR_DATABASE_ADMIN_URL
need DR_DATABASE_SERVER_ID
need PRIMARY_AMQP_URL
need DR_AMQP_URL
need DR_RABBITMQCTL
[ "$MODE" = kubectl ] && need DR_CONTEXT

replica() {
  check_cluster "${DR_CONTEXT:-}" "$DR_REGION"
  local status
  status=$(db_status "$DR_DATABASE_ADMIN_URL") || return 1
  [ "$MODE" = dry-run ] && return 0
  [ "$(jq -r .server_id <<<"$status")" = "$DR_DATABASE_SERVER_ID" ] ||
    { say "    DR_DATABASE_ADMIN_URL reaches server $(jq -r .server_id <<<"$status"), not $DR_DATABASE_SERVER_ID"; return 5; }
  if [ "$(jq -r .io_running <<<"$status")" = Yes ] && [ "$(jq -r .sql_running <<<"$status")" = Yes ]; then
    say "    DR database replicates from $(jq -r .source <<<"$status"), $(jq -r .seconds_behind_source <<<"$status") s behind"
    return 0
  fi
  if [ "$REPLICATE" != 1 ]; then
    say "    DR database is $(jq -r .role <<<"$status"), not a running replica (io $(jq -r .io_running <<<"$status"), sql $(jq -r .sql_running <<<"$status")): --replicate makes it one"
    return 5
  fi
  need PRIMARY_DATABASE_HOST_FOR_DR
  need PRIMARY_REPLICATION_USER
  need PRIMARY_REPLICATION_PASSWORD
  local host=${PRIMARY_DATABASE_HOST_FOR_DR%%:*} port=3306
  [ "$host" != "$PRIMARY_DATABASE_HOST_FOR_DR" ] && port=${PRIMARY_DATABASE_HOST_FOR_DR#*:}
  status=$(DR_REPLICATION_PASSWORD=$PRIMARY_REPLICATION_PASSWORD worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" \
    replicate-from --source-host "$host" --source-port "$port" --source-user "$PRIMARY_REPLICATION_USER" \
    --expect-server-id "$DR_DATABASE_SERVER_ID" --json) || return $?
  say "    DR database replicates from $host:$port: io $(jq -r .io_running <<<"$status"), sql $(jq -r .sql_running <<<"$status")"
}

link() {
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr link --primary-amqp <PRIMARY_AMQP_URL> --retention-ms $RETENTION_MS"
  else
    local report
    report=$(worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" link --primary-amqp "$PRIMARY_AMQP_URL" --retention-ms "$RETENTION_MS" --json) || return $?
    say "    $(jq -r .outbound <<<"$report") (primary) -> $(jq -r .inbound <<<"$report") (DR)"
  fi
  local definition
  definition=$(jq -cn --arg src "$PRIMARY_AMQP_URL" --arg dest "$DR_AMQP_URL" \
    --arg queue "${PREFIX}.dr.outbound" --arg exchange "${PREFIX}.dr.standby" \
    '{"src-protocol": "amqp091", "src-uri": $src, "src-queue": $queue, "src-prefetch-count": 1000,
      "dest-protocol": "amqp091", "dest-uri": $dest, "dest-exchange": $exchange,
      "ack-mode": "on-confirm", "reconnect-delay": 1}')
  if [ "$MODE" = dry-run ]; then
    say "    would run: \$DR_RABBITMQCTL set_parameter shovel $(shovel_name) '<definition with the two URLs>'"
    return 0
  fi
  # shellcheck disable=SC2086 # DR_RABBITMQCTL is a command line
  $DR_RABBITMQCTL set_parameter shovel "$(shovel_name)" "$definition" >/dev/null || return 1
  local state=""
  for _ in $(seq 1 60); do
    # shellcheck disable=SC2086
    state=$($DR_RABBITMQCTL shovel_status --formatter json 2>/dev/null | jq -r --arg name "$(shovel_name)" '.[] | select(.name == $name) | .state' 2>/dev/null || true)
    [ "$state" = running ] && break
    sleep 0.5
  done
  [ "$state" = running ] || { say "    the shovel $(shovel_name) is ${state:-not there} after 30 s"; return 1; }
  say "    shovel $(shovel_name) running"
}

say "standby: $DR_REGION for $PRIMARY_REGION (mode $MODE)"
step "the DR database is a running replica of the primary" replica
step "the copy of every event: queues and the shovel" link
summary done
