#!/bin/sh
# The redis-cluster-init service (docker-compose.yml, profile `cluster`): forms the Redis Cluster
# of the six nodes once, and leaves a formed one alone, so it runs at every `up`.
#
#   sh redis-cluster-init.sh --cluster-replicas N HOST:PORT...
#
# As the administrator `default`: redis-cli reads its password from REDISCLI_AUTH, as the nodes'
# health checks do. Steps:
#   1. wait until every node answers PING;
#   2. every node in cluster_state:ok and connected to all the others: formed, nothing to do;
#   3. every node brand new (no slot assigned, knowing only itself):
#      redis-cli --cluster create HOST:PORT... --cluster-replicas N --cluster-yes;
#   4. nodes that were in the cluster before but are not ok (containers recreated with new IP
#      addresses: the cluster bus uses the addresses each node's nodes.conf remembers): each
#      node meets every other at its current address, and they know each other again by node ID;
#   5. wait until every node reports cluster_state:ok and `redis-cli --cluster check` passes.
# Some nodes new and others in a cluster (a node's volume lost) is refused: docs/OPERATIONS.md
# says how to add a node by hand. Waits give up after L9_CLUSTER_WAIT_S seconds (default 120).
set -eu
cli=${L9_REDIS_CLI:-redis-cli}
wait_s=${L9_CLUSTER_WAIT_S:-120}

say() { echo "redis-cluster-init: $*"; }
die() {
    echo "redis-cluster-init: $*" >&2
    exit 1
}

replicas=
if [ "${1:-}" = "--cluster-replicas" ] && [ $# -ge 2 ]; then
    replicas=$2
    shift 2
fi
case "$replicas" in
'' | *[!0-9]*) die "usage: redis-cluster-init.sh --cluster-replicas N HOST:PORT..." ;;
esac
[ $# -ge 3 ] || die "a cluster needs at least 3 nodes, got $#: $*"
count=$#
first=$1

# (sh has no local variables: the functions' own are named _*, apart from the script's)
on() { # on HOST:PORT ARGS...: one redis-cli command on one node
    _host=${1%:*} _port=${1##*:}
    shift
    "$cli" -h "$_host" -p "$_port" "$@"
}

field() { # field HOST:PORT NAME: a CLUSTER INFO field of the node ("" if it does not answer)
    on "$1" CLUSTER INFO 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}

linked() { # linked HOST:PORT: the node knows exactly the nodes given, each healthy and connected
    # CLUSTER NODES: id address flags master ping-sent pong-recv epoch link-state slots...
    on "$1" CLUSTER NODES 2>/dev/null | tr -d '\r' | awk -v want="$count" '
        NF { seen++; if ($3 ~ /fail|handshake|noaddr/ || $8 != "connected") bad = 1 }
        END { exit !(seen == want && !bad) }'
}

endpoints_known() { # endpoints_known HOST:PORT: the node's slot map names every node (a node
    # whose announced hostname has not reached it yet is "?" there, where clients look)
    _slots=$(on "$1" CLUSTER SLOTS 2>/dev/null | tr -d '\r') || return 1
    [ -n "$_slots" ] && ! printf '%s\n' "$_slots" | grep -qx '?'
}

formed() { # every node ok, linked to every other (a node restarted with peers at stale
    # addresses may say ok while it reaches nobody: the links tell), every endpoint known
    for _node in "$@"; do
        [ "$(field "$_node" cluster_state)" = ok ] || return 1
        linked "$_node" || return 1
        endpoints_known "$_node" || return 1
    done
}

deadline=$(($(date +%s) + wait_s))
waiting() { # waiting WHAT: fail once the deadline has passed
    [ "$(date +%s)" -lt "$deadline" ] || die "$1 after ${wait_s}s"
    sleep 1
}

for node in "$@"; do
    until [ "$(on "$node" PING 2>/dev/null)" = PONG ]; do
        waiting "$node does not answer PING (as default, REDISCLI_AUTH)"
    done
done

if formed "$@"; then
    say "the cluster of $count nodes is formed already: nothing to do"
    exit 0
fi

new=0
for node in "$@"; do
    if [ "$(field "$node" cluster_known_nodes)" = 1 ] && [ "$(field "$node" cluster_slots_assigned)" = 0 ]; then
        new=$((new + 1))
    fi
done

if [ "$new" = "$count" ]; then
    say "forming a cluster of $count nodes, $replicas replica(s) per master"
    "$cli" --cluster create "$@" --cluster-replicas "$replicas" --cluster-yes
elif [ "$new" = 0 ]; then
    say "the nodes were in a cluster but it is not ok: introducing them again at their addresses"
    for node in "$@"; do
        host=${node%:*}
        address=$(getent hosts "$host" | awk '{ print $1; exit }')
        [ -n "$address" ] || die "cannot resolve $host"
        for other in "$@"; do
            [ "$other" = "$node" ] || on "$other" CLUSTER MEET "$address" "${node##*:}" >/dev/null
        done
    done
else
    die "$new of $count nodes are new, the others are in a cluster: add or replace nodes by hand (docs/OPERATIONS.md)"
fi

until formed "$@" && "$cli" --cluster check "$first" >/dev/null 2>&1; do
    waiting "the cluster is not ok"
done
say "cluster ok:"
"$cli" --cluster check "$first"
