"""Blocking reads of streams spread over several Redis Cluster slots.

One XREAD or XREADGROUP may not name keys of different slots on a cluster. A reader of
streams in several slots (the auditor, the lineage projector, ``l9 extract``'s watcher, an
agent consuming several streams) keeps one blocking read per slot under way, each on its
own connection, and takes whatever answers first: an idle reader sends one read per slot
per block period (no hot loop), and an entry in any slot is read as soon as it is added
(no latency added to wait for the others).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, MovedError

from .connection import REDIRECTS, slot_of

K = TypeVar("K", str, bytes)


def by_slot(keys: Iterable[K]) -> dict[int, list[K]]:
    """``keys`` grouped by cluster slot, in their order."""
    out: dict[int, list[K]] = {}
    for key in keys:
        out.setdefault(slot_of(key), []).append(key)
    return out


async def read_in_slot(cluster: RedisCluster, slot: int, *command: Any) -> Any:
    """``command`` (an XREAD or XREADGROUP of keys of ``slot``) sent straight to the slot's
    master. redis-py would first ask a node for the keys of such a command (``COMMAND
    GETKEYS``: their key positions follow the ``STREAMS`` keyword, which its parser does not
    compute), one more round trip before every read. MOVED updates the slot map and goes
    again; ASK (the slot is migrating) goes through redis-py's own routing, which follows it."""
    for _ in range(REDIRECTS):
        node = cluster.nodes_manager.get_node_from_slot(slot)
        try:
            return await cluster.execute_command(*command, target_nodes=node)
        except MovedError as exc:  # before AskError, its base class
            await cluster.nodes_manager.move_slot(exc)
        except AskError:
            break
    return await cluster.execute_command(*command)


def xreadgroup_command(
    group: str, consumer: str, streams: Mapping[Any, Any], count: int, block: int
) -> tuple[Any, ...]:
    """The words of ``XREADGROUP GROUP group consumer COUNT count BLOCK block STREAMS ...``."""
    return (
        "XREADGROUP",
        "GROUP",
        group,
        consumer,
        "COUNT",
        count,
        "BLOCK",
        block,
        "STREAMS",
        *streams,
        *streams.values(),
    )


def xread_command(streams: Mapping[Any, Any], count: int, block: int) -> tuple[Any, ...]:
    """The words of ``XREAD COUNT count BLOCK block STREAMS ...``."""
    return ("XREAD", "COUNT", count, "BLOCK", block, "STREAMS", *streams, *streams.values())


class SlotReads:
    """The blocking reads under way, one per slot; see the module docstring."""

    def __init__(self) -> None:
        self._reads: dict[int, asyncio.Future[Any]] = {}

    async def next(self, reads: Mapping[int, Callable[[], Awaitable[Any]]]) -> list[Any]:
        """Start the read of every slot in ``reads`` that has none under way, wait until at
        least one answers, and return the entries of every one that has answered, as a
        list of ``(key, entries)`` (RESP2 replies and RESP3 maps alike). A read that failed
        raises here, once the others' answers are taken (their entries are then pending in
        their group, or read again from the same position by XREAD). Cancelled while
        waiting, it cancels the reads under way. One slot with no read under way is read
        here, without a task (the path of every reader of one slot)."""
        pending = self._reads
        if len(reads) == 1 and not pending:
            (start,) = reads.values()
            reply = await start()
            return list(reply.items()) if isinstance(reply, dict) else list(reply or ())
        for slot, start in reads.items():
            if slot not in pending:
                pending[slot] = asyncio.ensure_future(start())
        try:
            await asyncio.wait(pending.values(), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self.cancel()
            raise
        merged: list[Any] = []
        failure: BaseException | None = None
        for slot, read in list(pending.items()):
            if not read.done():
                continue
            del pending[slot]
            error = read.exception()
            if error is not None:
                failure = failure or error
                continue
            reply = read.result()
            if isinstance(reply, dict):
                merged.extend(reply.items())
            elif reply:
                merged.extend(reply)
        if failure is not None:
            raise failure
        return merged

    def cancel(self) -> None:
        """Cancel every read under way (the streams read changed, or the reader stops)."""
        for read in self._reads.values():
            read.cancel()
        self._reads.clear()
