#!/bin/sh
# The entrypoint of the Redis service and of the cluster nodes (docker-compose.yml): load the
# agents' users, as rendered by `l9 acl render` (the redis_users secret), and the administrator
# `default` with the password REDIS_ADMIN_PASSWORD, then start Redis the way the image does
# (as user redis).
# The `default` line is needed: an ACL file without one leaves `default` open (no password,
# every command) beside the agents' users.
set -eu
users=${L9_ACL_SOURCE:-/run/secrets/redis_users}
effective=${L9_ACL_EFFECTIVE:-/data/users.acl}
if [ -z "${REDIS_ADMIN_PASSWORD:-}" ]; then
    echo "redis-entrypoint: REDIS_ADMIN_PASSWORD is not set (l9 deploy env writes it to .env)" >&2
    exit 1
fi
if [ ! -s "$users" ]; then
    echo "redis-entrypoint: $users is missing or empty: run l9 acl render first" >&2
    exit 1
fi
umask 077
hash=$(printf %s "$REDIS_ADMIN_PASSWORD" | sha256sum | cut -d ' ' -f 1)
{
    grep -v '^user default ' "$users"
    echo "user default on #$hash ~* &* +@all"
} > "$effective"
# `sh redis-entrypoint.sh reload-acl [redis-cli options]`, in the running container (docker compose
# exec): the file above written again from the secret as it is now (`l9 acl render` rewrites it
# in place), then ACL LOAD as `default` (REDISCLI_AUTH): the users change without a restart. A
# bare ACL LOAD would read the file written at start again. On a cluster: on every node.
if [ "${1:-}" = reload-acl ]; then
    shift
    if [ "$(id -u)" = 0 ] && id redis >/dev/null 2>&1; then
        chown redis "$effective" # the server runs as redis (the image's entrypoint)
    fi
    exec ${L9_REDIS_CLI:-redis-cli} "$@" ACL LOAD
fi
# A Redis Cluster node (the compose profile `cluster`): its replicas must authenticate to their
# master, which admits only the users above, so replication runs as `default` (masterauth). The
# password goes in a config file (mode 0600) given first, never on the command line, which
# `ps` on the host would show.
case " $* " in
*" --cluster-enabled yes "*)
    conf="$(dirname "$effective")/replication.conf"
    quoted=$(printf %s "$REDIS_ADMIN_PASSWORD" | sed 's/[\\"]/\\&/g')
    printf 'masterauth "%s"\n' "$quoted" > "$conf"
    set -- "$conf" "$@"
    ;;
esac
# L9_REDIS_START replaces the image's start command (the tests run a local redis-server).
exec ${L9_REDIS_START:-docker-entrypoint.sh redis-server} "$@" --aclfile "$effective"
