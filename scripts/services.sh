#!/usr/bin/env bash
# Start PostgreSQL and RabbitMQ if they are not answering, then wait for them.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 1
  done
  echo "$name is not answering on 127.0.0.1:$port after 120 s" >&2
  exit 1
}

if ! port_open 5432; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_port PostgreSQL 5432
until psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1; do sleep 1; done

if ! port_open 5672; then
  echo "starting RabbitMQ" >&2
  rabbitmq-server -detached
fi
wait_port RabbitMQ 5672
# The port opens before the broker accepts connections on a cold start.
rabbitmqctl await_startup >/dev/null 2>&1 || true
# amqp.work_queues > 1 hashes tenants over several work queues with the
# consistent-hash exchange, a plugin RabbitMQ ships but does not enable.
rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
