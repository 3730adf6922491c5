#!/bin/sh
# The official image's contract: `redis-server ARGS` without a configuration file listens on
# every interface (protected mode off) and runs as user redis.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --protected-mode no "$@"
fi
exec "$@"
