#!/bin/sh
# The Redis service's entrypoint (docker-compose.yml): load the agents' users, as rendered
# by `l9 acl render` (the redis_users secret), and the administrator `default` with the
# password REDIS_ADMIN_PASSWORD, then start Redis the way the image does (as user redis).
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
# L9_REDIS_START replaces the image's start command (the tests run a local redis-server).
exec ${L9_REDIS_START:-docker-entrypoint.sh redis-server} "$@" --aclfile "$effective"
