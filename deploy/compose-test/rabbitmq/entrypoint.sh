#!/bin/sh
# The official image's contract: RABBITMQ_DEFAULT_USER/PASS become the first user, reachable
# from other containers (not loopback only), and the broker runs as user rabbitmq.
set -eu
if [ "${1:-}" = rabbitmq-server ]; then
  {
    echo "loopback_users = none"
    echo "default_user = ${RABBITMQ_DEFAULT_USER:-guest}"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}"
  } >/etc/rabbitmq/rabbitmq.conf
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups /usr/lib/rabbitmq/bin/rabbitmq-server
fi
exec "$@"
