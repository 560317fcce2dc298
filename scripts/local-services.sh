#!/usr/bin/env bash
# Makes sure RabbitMQ (127.0.0.1:5672) and MariaDB (127.0.0.1:3306) answer: reuses running ones,
# starts installed ones, installs them from Debian packages when absent and we are root, and
# otherwise says exactly what to do. Used by `make deps` and `.ci/run`.
set -euo pipefail

say() { printf '%s\n' "$*" >&2; }

answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name port seconds
  local name=$1 port=$2 seconds=$3
  for _ in $(seq 1 "$seconds"); do
    if answers 127.0.0.1 "$port"; then return 0; fi
    sleep 1
  done
  say "error: $name did not answer on 127.0.0.1:$port within ${seconds}s"
  return 1
}

need_root() { # what
  if [ "$(id -u)" -ne 0 ]; then
    say "error: $1 is not running and this user cannot start it."
    say "  start it yourself, e.g.:  sudo apt-get install -y mariadb-server rabbitmq-server"
    say "  then:                      sudo rabbitmq-server -detached; sudo systemctl start mariadb"
    say "  or point the tests elsewhere with TEST_DATABASE_URL / TEST_AMQP_URL (and DATABASE_URL / AMQP_URL for make run)."
    exit 1
  fi
}

apt_install() {
  say "installing $* from Debian packages…"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_mariadb() {
  if answers 127.0.0.1 3306; then say "MariaDB answers on 127.0.0.1:3306"; return; fi
  need_root "MariaDB"
  if [ ! -x /usr/sbin/mariadbd ]; then apt_install mariadb-server; fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  say "starting MariaDB…"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_for MariaDB 3306 60
  # A fresh package install lets root in over the socket only; the tests connect over TCP.
  mariadb -uroot -e "create database if not exists test" 2>/dev/null || true
  say "MariaDB answers on 127.0.0.1:3306"
}

ensure_rabbitmq() {
  if answers 127.0.0.1 5672; then say "RabbitMQ answers on 127.0.0.1:5672"; return; fi
  need_root "RabbitMQ"
  if ! command -v rabbitmq-server >/dev/null 2>&1; then apt_install rabbitmq-server; fi
  say "starting RabbitMQ…"
  rabbitmq-server -detached
  wait_for RabbitMQ 5672 90
  say "RabbitMQ answers on 127.0.0.1:5672"
}

case "${1:-all}" in
  mariadb) ensure_mariadb ;;
  rabbitmq) ensure_rabbitmq ;;
  all) ensure_mariadb; ensure_rabbitmq ;;
  *) say "usage: $0 [all|mariadb|rabbitmq]"; exit 2 ;;
esac
