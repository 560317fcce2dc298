#!/usr/bin/env bash
# Failback to the primary region after a failover, in two commands. docs/operations.md,
# "Disaster recovery: failback", is the runbook; the settings are listed atop scripts/dr-lib.sh.
#
#   scripts/failback.sh prepare --discard-old-primary [--local | --dry-run] [--json] [--databases "automation"]
#     The DR region keeps serving. Re-seeds the primary region's database from the DR database
#     (a consistent dump with its GTID position; the old primary's own data, binary logs and the
#     transactions it had that DR never received are DISCARDED: copy its binlogs away first if you
#     want them) and makes it a read-only replica of DR. Takes as long as the dump; run it ahead.
#     Also needs DR_DATABASE_HOST_FOR_PRIMARY (the DR database's address as the primary region's
#     database reaches it, host:port), DR_REPLICATION_USER, DR_REPLICATION_PASSWORD.
#
#   scripts/failback.sh switch [--local | --dry-run] [--json]
#     The planned switch, a short pause of processing (not of the APIs' 202s: events queue):
#     1. the primary region's workers held at 0, its API started (the clients' DNS goes back to it
#        now); the DR API stopped so nothing new reaches the DR broker;
#     2. waits until the DR work queues are empty (the DR workers apply what was sent to DR), then
#        stops the DR workers;
#     3. fences the DR database (read_only), waits until the primary's replica has applied all of
#        it, promotes the primary's database;
#     4. makes the DR database a replica of the primary again and re-links the standby
#        (scripts/dr-standby.sh: the copy queue and the shovel), the DR API back at 1;
#     5. starts the primary region's workers.
#     Also needs PRIMARY_DATABASE_HOST_FOR_DR (host:port of the primary's database as DR reaches it),
#     PRIMARY_REPLICATION_USER, PRIMARY_REPLICATION_PASSWORD.
source "$(dirname "$0")/dr-lib.sh"

PHASE=${1:-}
[ "$PHASE" = prepare ] || [ "$PHASE" = switch ] || { usage >&2; exit 2; }
shift
DISCARD=0
DATABASES=automation
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --discard-old-primary) DISCARD=1 ;;
    --databases) DATABASES=${args[$((i + 1))]:-} ;;
    --local | --dry-run | --json | --force | --resume | -h | --help) ;;
    *) [ "${args[$((i - 1))]:-}" = --databases ] || { say "unknown argument ${args[$i]}"; usage >&2; exit 2; } ;;
  esac
done
parse_common "$@"
need PRIMARY_DATABASE_ADMIN_URL
need PRIMARY_DATABASE_SERVER_ID
need DR_DATABASE_ADMIN_URL
need DR_DATABASE_SERVER_ID
need PRIMARY_AMQP_URL
need DR_AMQP_URL
if [ "$MODE" = kubectl ]; then
  need PRIMARY_CONTEXT
  need DR_CONTEXT
fi

# A client options file (mode 600) for mariadb/mysql and their dump tools: no password in ps.
client_file() {
  local file
  file=$(mktemp)
  chmod 600 "$file"
  { echo "[client]"; client_options "$1" | sed 's/^--//'; } >"$file"
  echo "$file"
}

expect_role() {
  local url=$1 id=$2 wanted=$3 name=$4
  local status role found
  status=$(db_status "$url") || return 1
  [ "$MODE" = dry-run ] && return 0
  role=$(jq -r .role <<<"$status")
  found=$(jq -r .server_id <<<"$status")
  [ "$found" = "$id" ] || { say "    $name database: server $found, not $id: wrong database"; return 5; }
  case " $wanted " in
    *" $role "*) say "    $name database: server $found, $role" ;;
    *) say "    $name database (server $found) is $role, not $wanted"; return 5 ;;
  esac
}

# ---- prepare ------------------------------------------------------------------------------------

prepare_checks() {
  check_cluster "${DR_CONTEXT:-}" "$DR_REGION"
  [ "$DISCARD" = 1 ] || {
    say "    prepare overwrites the primary region's database with DR's: add --discard-old-primary"
    return 5
  }
  need DR_DATABASE_HOST_FOR_PRIMARY
  need DR_REPLICATION_USER
  need DR_REPLICATION_PASSWORD
  expect_role "$DR_DATABASE_ADMIN_URL" "$DR_DATABASE_SERVER_ID" "primary" DR || return $?
  # The old primary, back: a primary (it never learnt of the failover), fenced, or a replica.
  expect_role "$PRIMARY_DATABASE_ADMIN_URL" "$PRIMARY_DATABASE_SERVER_ID" "primary fenced replica" primary || return $?
}

fence_old_primary() {
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr fence --expect-server-id $PRIMARY_DATABASE_SERVER_ID"
    return 0
  fi
  local status
  status=$(worker_dr "$PRIMARY_DATABASE_ADMIN_URL" "$PRIMARY_AMQP_URL" fence --expect-server-id "$PRIMARY_DATABASE_SERVER_ID" --json) || return $?
  say "    the old primary had $(jq -r .gtid_position <<<"$status") (what DR lacks of it is discarded now)"
}

reseed() {
  local dialect
  dialect=$(db_status "$DR_DATABASE_ADMIN_URL" | jq -r .dialect)
  local dump_tool=mariadb-dump client=mariadb position_flags=(--gtid --master-data=2)
  if [ "$dialect" = mysql ]; then
    dump_tool=mysqldump client=mysql position_flags=(--set-gtid-purged=ON --source-data=2)
  fi
  if [ "$MODE" = dry-run ]; then
    say "    would run: $dump_tool --single-transaction ${position_flags[*]} --add-drop-database --databases $DATABASES (from DR) | $client (into the primary, binlog off)"
    return 0
  fi
  command -v "$dump_tool" >/dev/null 2>&1 || { say "    $dump_tool is needed"; return 3; }
  local source_cnf target_cnf dump
  source_cnf=$(client_file "$DR_DATABASE_ADMIN_URL")
  target_cnf=$(client_file "$PRIMARY_DATABASE_ADMIN_URL")
  dump=$(mktemp)
  # shellcheck disable=SC2086 # DATABASES is a list of names
  "$dump_tool" --defaults-extra-file="$source_cnf" --single-transaction "${position_flags[@]}" \
    --add-drop-database --routines --triggers --databases $DATABASES >"$dump" || { rm -f "$source_cnf" "$target_cnf" "$dump"; return 1; }
  # The old primary forgets its replication, its binary logs and GTIDs (MySQL needs an empty
  # gtid_executed for the dump's GTID_PURGED), then loads the dump without logging it.
  local reset="stop replica; reset replica all; reset master;"
  # MySQL 8.4 renamed RESET MASTER; 8.0 knows only the old name.
  if [ "$dialect" = mysql ]; then
    "$client" --defaults-extra-file="$target_cnf" -e "stop replica; reset replica all; reset binary logs and gtids;" 2>/dev/null && reset=""
  fi
  if [ -n "$reset" ]; then
    "$client" --defaults-extra-file="$target_cnf" -e "$reset" || { rm -f "$source_cnf" "$target_cnf" "$dump"; return 1; }
  fi
  "$client" --defaults-extra-file="$target_cnf" --init-command="set session sql_log_bin = 0" <"$dump" ||
    { rm -f "$source_cnf" "$target_cnf" "$dump"; return 1; }
  SEED_GTID=""
  if [ "$dialect" = mariadb ]; then
    SEED_GTID=$(sed -n "s/^-- SET GLOBAL gtid_slave_pos='\(.*\)';$/\1/p" "$dump" | head -1)
    [ -n "$SEED_GTID" ] || { say "    the dump names no gtid_slave_pos"; rm -f "$source_cnf" "$target_cnf" "$dump"; return 1; }
  fi
  if [ -n "$SEED_GTID" ]; then
    # Its binlog starts at the seed, so DR can later replicate from it from where it stands.
    "$client" --defaults-extra-file="$target_cnf" -e "set global gtid_binlog_state = '$SEED_GTID'" ||
      { rm -f "$source_cnf" "$target_cnf" "$dump"; return 1; }
  fi
  say "    re-seeded from DR ($(wc -c <"$dump") bytes of dump${SEED_GTID:+, at $SEED_GTID})"
  rm -f "$source_cnf" "$target_cnf" "$dump"
}

replicate_primary_from_dr() {
  local host=${DR_DATABASE_HOST_FOR_PRIMARY%%:*} port=3306
  [ "$host" != "$DR_DATABASE_HOST_FOR_PRIMARY" ] && port=${DR_DATABASE_HOST_FOR_PRIMARY#*:}
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr replicate-from --source-host $host --source-port $port --source-user $DR_REPLICATION_USER"
    return 0
  fi
  local gtid=()
  [ -n "${SEED_GTID:-}" ] && gtid=(--gtid-pos "$SEED_GTID")
  local status
  status=$(DR_REPLICATION_PASSWORD=$DR_REPLICATION_PASSWORD worker_dr "$PRIMARY_DATABASE_ADMIN_URL" "$PRIMARY_AMQP_URL" \
    replicate-from --source-host "$host" --source-port "$port" --source-user "$DR_REPLICATION_USER" \
    "${gtid[@]}" --expect-server-id "$PRIMARY_DATABASE_SERVER_ID" --force --json) || {
    say "    replication did not start: $(jq -r '.last_io_error + " " + .last_sql_error' <<<"${status:-{\}}" 2>/dev/null)"
    return 1
  }
  say "    the primary region's database replicates from DR: io $(jq -r .io_running <<<"$status"), sql $(jq -r .sql_running <<<"$status")"
}

# ---- switch -------------------------------------------------------------------------------------

switch_checks() {
  check_cluster "${DR_CONTEXT:-}" "$DR_REGION"
  check_cluster "${PRIMARY_CONTEXT:-}" "$PRIMARY_REGION"
  need PRIMARY_DATABASE_HOST_FOR_DR
  need PRIMARY_REPLICATION_USER
  need PRIMARY_REPLICATION_PASSWORD
  expect_role "$DR_DATABASE_ADMIN_URL" "$DR_DATABASE_SERVER_ID" "primary" DR || return $?
  expect_role "$PRIMARY_DATABASE_ADMIN_URL" "$PRIMARY_DATABASE_SERVER_ID" "replica" primary || return $?
  [ "$MODE" = dry-run ] && return 0
  local status
  status=$(db_status "$PRIMARY_DATABASE_ADMIN_URL")
  [ "$(jq -r .io_running <<<"$status")" = Yes ] && [ "$(jq -r .sql_running <<<"$status")" = Yes ] || {
    say "    the primary region's replica is not running (io $(jq -r .io_running <<<"$status"), sql $(jq -r .sql_running <<<"$status")): run prepare"
    return 5
  }
}

hold_primary_region() {
  scale "$PRIMARY_REGION" "${PRIMARY_CONTEXT:-}" worker 0
  scale "$PRIMARY_REGION" "${PRIMARY_CONTEXT:-}" api 2
  scale "$DR_REGION" "${DR_CONTEXT:-}" api 0
}

drain_dr() {
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr queues --wait-empty 600 (DR broker)"
  else
    local report
    report=$(worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" queues --wait-empty "${DR_DRAIN_SECONDS:-600}" --json) || return $?
    say "    DR work queues empty"
  fi
  scale "$DR_REGION" "${DR_CONTEXT:-}" worker 0
}

move_primary() {
  if [ "$MODE" = dry-run ]; then
    say "    would run: dr fence (DR), dr promote --until-gtid <DR's position> (primary)"
    return 0
  fi
  local fenced position report
  fenced=$(worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" fence --expect-server-id "$DR_DATABASE_SERVER_ID" --json) || return $?
  position=$(jq -r .gtid_position <<<"$fenced")
  say "    DR fenced at $position"
  report=$(worker_dr "$PRIMARY_DATABASE_ADMIN_URL" "$PRIMARY_AMQP_URL" promote --expect-server-id "$PRIMARY_DATABASE_SERVER_ID" \
    --until-gtid "$position" --force --json) || return $?
  say "    the primary region's database is primary again (waited $(jq -r .waited_ms <<<"$report") ms)"
}

restore_standby() {
  local host=${PRIMARY_DATABASE_HOST_FOR_DR%%:*} port=3306
  [ "$host" != "$PRIMARY_DATABASE_HOST_FOR_DR" ] && port=${PRIMARY_DATABASE_HOST_FOR_DR#*:}
  if [ "$MODE" = dry-run ]; then
    say "    would run: automation-worker dr replicate-from --source-host $host (DR), scripts/dr-standby.sh"
  else
    local status
    status=$(DR_REPLICATION_PASSWORD=$PRIMARY_REPLICATION_PASSWORD worker_dr "$DR_DATABASE_ADMIN_URL" "$DR_AMQP_URL" \
      replicate-from --source-host "$host" --source-port "$port" --source-user "$PRIMARY_REPLICATION_USER" \
      --expect-server-id "$DR_DATABASE_SERVER_ID" --force --json) || return $?
    say "    DR replicates from the primary again: io $(jq -r .io_running <<<"$status"), sql $(jq -r .sql_running <<<"$status")"
    local flags=()
    [ "$MODE" = local ] && flags+=(--local)
    "$(dirname "$0")/dr-standby.sh" "${flags[@]}" --json >/dev/null || return $?
  fi
  scale "$DR_REGION" "${DR_CONTEXT:-}" api 1
}

start_primary_region() {
  scale "$PRIMARY_REGION" "${PRIMARY_CONTEXT:-}" worker "$DR_WORKER_REPLICAS"
}

if [ "$PHASE" = prepare ]; then
  say "failback, prepare: re-seed the $PRIMARY_REGION database from $DR_REGION (mode $MODE)"
  step "checks: DR is the primary, the old primary is the server named" prepare_checks
  step "fence the old primary (read_only)" fence_old_primary
  step "re-seed the old primary from DR (dump and load)" reseed
  step "make it a replica of DR" replicate_primary_from_dr
else
  say "failback, switch: $DR_REGION -> $PRIMARY_REGION (mode $MODE)"
  step "checks: DR is the primary, the primary region's database its running replica" switch_checks
  step "hold the primary region's workers at 0, its API up; stop the DR API" hold_primary_region
  step "drain the DR work queues, stop the DR workers" drain_dr
  step "fence DR, promote the primary region's database once it has everything" move_primary
  step "DR a replica of the primary again, the standby link restored" restore_standby
  step "start the primary region's workers" start_primary_region
fi
summary done
