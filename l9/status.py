"""``l9 status``: streams, groups, consumers, lag, pending and dead letters."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from bus import Keys, as_text


async def stream_names(redis: aioredis.Redis, keys: Keys) -> list[str]:
    names = {as_text(n) for n in await redis.smembers(keys.streams_index())}
    async for key in redis.scan_iter(match=f"{keys.namespace}:{{*}}", _type="stream"):
        try:
            names.add(keys.name_of(as_text(key)))
        except ValueError:
            continue
    return sorted(names)


async def collect_status(redis: aioredis.Redis, keys: Keys) -> dict[str, Any]:
    """A JSON-able snapshot of every stream of the namespace."""
    streams = []
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
                "length": int(info["length"]),
                "last_id": as_text(info["last-generated-id"]),
                "dead_letters": int(await redis.xlen(keys.dead(name))),
                "groups": groups,
            }
        )
    return {"namespace": keys.namespace, "streams": streams}


def render_status(status: dict[str, Any], console: Console) -> None:
    table = Table(title=f"L9 streams (namespace {status['namespace']})")
    for column in ("stream", "length", "dead", "group", "lag", "pending", "consumers"):
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
            table.add_row(
                s["name"] if i == 0 else "",
                str(s["length"]) if i == 0 else "",
                str(s["dead_letters"]) if i == 0 else "",
                g["name"] if g else "-",
                "" if not g or g["lag"] is None else str(g["lag"]),
                str(g["pending"]) if g else "",
                consumers,
            )
    console.print(table)
