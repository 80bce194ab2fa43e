"""``l9 status``: streams, groups, consumers, lag, pending and dead letters; on a Redis
Cluster also its shards (master, replicas, slot ranges) and the node, slot and partition of
every stream."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import RedisCluster
from rich.console import Console
from rich.table import Table

from bus import Keys, as_text, partition_of
from bus.connection import RedisClient, slot_of
from bus.index import known_streams


async def stream_names(redis: RedisClient, keys: Keys) -> list[str]:
    names = await known_streams(redis, keys)
    async for key in redis.scan_iter(match=keys.stream_pattern(), _type="stream"):
        try:
            names.add(keys.name_of(as_text(key)))
        except ValueError:
            continue
    return sorted(names)


def _ranges(slots: list[int]) -> list[list[int]]:
    """Sorted slot numbers as ``[first, last]`` ranges."""
    ranges: list[list[int]] = []
    for slot in slots:
        if ranges and ranges[-1][1] == slot - 1:
            ranges[-1][1] = slot
        else:
            ranges.append([slot, slot])
    return ranges


async def cluster_shards(redis: RedisCluster) -> list[dict[str, Any]]:
    """The shards of the cluster as the client's slot map has them now: each master, its
    replicas and its slot ranges."""
    if redis._initialize:
        await redis.initialize()
    slots: dict[str, list[int]] = {}
    replicas: dict[str, set[str]] = {}
    for slot, nodes in sorted(redis.nodes_manager.slots_cache.items()):
        if not nodes:
            continue
        master = nodes[0].name
        slots.setdefault(master, []).append(slot)
        replicas.setdefault(master, set()).update(n.name for n in nodes[1:])
    return [
        {
            "master": master,
            "replicas": sorted(replicas[master]),
            "slots": _ranges(owned),
            "slot_count": len(owned),
        }
        for master, owned in sorted(slots.items(), key=lambda item: item[1][0])
    ]


def _placement(redis: RedisClient, key: str, name: str) -> dict[str, Any]:
    """Where a stream lives: its partition, and on a cluster its slot and master."""
    where: dict[str, Any] = {"partition": partition_of(name)}
    if isinstance(redis, RedisCluster):
        slot = slot_of(key)
        nodes = redis.nodes_manager.slots_cache.get(slot) or []
        where.update(slot=slot, node=nodes[0].name if nodes else None)
    return where


async def collect_status(redis: RedisClient, keys: Keys) -> dict[str, Any]:
    """A JSON-able snapshot of every stream of the namespace (and of the cluster's shards)."""
    streams = []
    shards = await cluster_shards(redis) if isinstance(redis, RedisCluster) else None
    for name in await stream_names(redis, keys):
        key = keys.stream(name)
        if not await redis.exists(key):
            continue
        info = await redis.xinfo_stream(key)
        groups = []
        for g in await redis.xinfo_groups(key):
            gname = as_text(g["name"])
            consumers = []
            for c in await redis.xinfo_consumers(key, gname):
                cname = as_text(c["name"])
                consumers.append(
                    {
                        "name": cname,
                        "pending": int(c["pending"]),
                        "idle_ms": int(c["idle"]),
                        "alive": bool(await redis.exists(keys.heartbeat(cname))),
                    }
                )
            lag = g.get("lag")
            groups.append(
                {
                    "name": gname,
                    "pending": int(g["pending"]),
                    "lag": None if lag is None else int(lag),
                    "last_delivered_id": as_text(g["last-delivered-id"]),
                    "consumers": consumers,
                }
            )
        streams.append(
            {
                "name": name,
                "key": key,
                **_placement(redis, key, name),
                "length": int(info["length"]),
                "last_id": as_text(info["last-generated-id"]),
                "dead_letters": int(await redis.xlen(keys.dead(name))),
                "groups": groups,
            }
        )
    mode = {"mode": "standalone"} if shards is None else {"mode": "cluster", "shards": shards}
    return {"namespace": keys.namespace, "redis": mode, "streams": streams}


def render_status(status: dict[str, Any], console: Console) -> None:
    shards = status.get("redis", {}).get("shards")
    if shards is not None:
        cluster = Table(title=f"Redis Cluster: {len(shards)} shard(s)")
        for column in ("master", "replicas", "slots", "slot ranges"):
            cluster.add_column(column, justify="right" if column == "slots" else "left")
        for shard in shards:
            cluster.add_row(
                shard["master"],
                ", ".join(shard["replicas"]) or "none",
                str(shard["slot_count"]),
                ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in shard["slots"]),
            )
        console.print(cluster)
    table = Table(title=f"L9 streams (namespace {status['namespace']})")
    columns = ("stream", "node", "length", "dead", "group", "lag", "pending", "consumers")
    for column in columns if shards is not None else tuple(c for c in columns if c != "node"):
        table.add_column(
            column, justify="right" if column in {"length", "dead", "lag", "pending"} else "left"
        )
    for s in status["streams"]:
        rows = s["groups"] or [None]
        for i, g in enumerate(rows):
            consumers = (
                ", ".join(
                    f"{c['name']}({c['pending']}{'' if c['alive'] else ', dead'})" for c in g["consumers"]
                )
                if g
                else ""
            )
            node = [f"{s.get('node')} (slot {s.get('slot')})" if i == 0 else ""] if shards is not None else []
            table.add_row(
                s["name"] if i == 0 else "",
                *node,
                str(s["length"]) if i == 0 else "",
                str(s["dead_letters"]) if i == 0 else "",
                g["name"] if g else "-",
                "" if not g or g["lag"] is None else str(g["lag"]),
                str(g["pending"]) if g else "",
                consumers,
            )
    console.print(table)
