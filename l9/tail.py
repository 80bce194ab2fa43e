"""Reading the audit trail as a tail does (``l9 tail``, the console's trail page): the last
entries matching a filter, every one between two seqs, and following new ones as they commit.

A tail reads by ``seq`` cursor, one per chain
(:meth:`~memory.audit.AuditRecorder.entries_after`), so nothing is skipped or read twice;
NOTIFYs only wake it up (``watch_head``), and a poll every :data:`POLL_S` covers the ones a
dropped listener missed. Entries of several chains come in commit order
(:func:`memory.audit.commit_order`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from memory.audit import AuditRecorder, AuditStoreUnavailable, EntryFilter, StoredEntry, commit_order

log = structlog.get_logger("l9.tail")

#: Entries read per query.
PAGE = 1000
#: Seconds between two looks at the head when no notification came.
POLL_S = 1.0
#: Reconnect delays while PostgreSQL is unreachable during ``--follow``.
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 5.0


def short_id(value: str) -> str:
    """The random end of a long id (uuid7 ids of one minute share their start)."""
    return value if len(value) <= 12 else "…" + value[-8:]


async def last_entries(store: AuditRecorder, n: int, filters: EntryFilter, head: int) -> list[StoredEntry]:
    """The last ``n`` entries matching ``filters`` up to seq ``head``, oldest first.

    Reads backwards in windows of seqs, each four times the last: a rare match
    costs a few scans, a common one reads little more than ``n`` rows.
    """
    windows: list[list[StoredEntry]] = []  # newest window first
    wanted, high, size = n, head, max(n, 1)
    while wanted > 0 and high > 0:
        low = max(0, high - size)
        newest: deque[StoredEntry] = deque(maxlen=wanted)
        cursor = low
        while cursor < high:
            page = await store.entries_after(cursor, limit=PAGE, filters=filters, until_seq=high)
            newest.extend(page.entries)
            cursor = page.cursor
        windows.append(list(newest))
        wanted -= len(newest)
        high, size = low, size * 4
    return [entry for window in reversed(windows) for entry in window]


async def entries_between(
    store: AuditRecorder,
    after: int,
    until: int,
    filters: EntryFilter,
    emit: Callable[[StoredEntry], None],
) -> None:
    """Emit every entry matching ``filters`` with ``after < seq <= until``, by seq."""
    cursor = after
    while cursor < until:
        page = await store.entries_after(cursor, limit=PAGE, filters=filters, until_seq=until)
        for entry in page.entries:
            emit(entry)
        cursor = page.cursor


class _Waker:
    """Wakes the follow loop when a batch commits: LISTEN (via ``watch_head``) in a task
    of its own that reconnects on errors, and is restarted when it looks deaf."""

    def __init__(self, store: AuditRecorder) -> None:
        self.store = store
        self.woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def restart(self) -> None:
        await self.stop()
        self.start()

    async def wait(self, within_s: float) -> bool:
        """True when a notification came within ``within_s`` seconds, False otherwise."""
        try:
            await asyncio.wait_for(self.woken.wait(), within_s)
        except TimeoutError:
            return False
        self.woken.clear()
        return True

    async def _listen(self) -> None:
        delay = BACKOFF_MIN_S
        while True:
            try:
                async for _head in self.store.watch_head():
                    delay = BACKOFF_MIN_S
                    self.woken.set()
            except Exception as exc:  # any failure: polling carries on, listening is retried
                log.debug("tail.listen_failed", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)


Cursors = dict[int | None, int]
"""Where a tail stands: the last seq examined, per chain (``None``: a trail of one chain,
read without a chain filter)."""


def filtered_for(filters: EntryFilter, chain: int | None) -> EntryFilter:
    return filters if chain is None else replace(filters, chain=chain)


def where(cursors: Cursors) -> dict[str, Any]:
    """The cursors as log fields: ``cursor`` for one chain, ``cursors`` by chain for several."""
    if list(cursors) == [None]:
        return {"cursor": cursors[None]}
    return {"cursors": {str(chain): cursor for chain, cursor in cursors.items()}}


async def follow(
    store: AuditRecorder,
    cursors: Cursors,
    filters: EntryFilter,
    emit: Callable[[StoredEntry], None],
    *,
    poll_s: float = POLL_S,
) -> None:
    """Emit each entry matching ``filters`` after each chain's cursor as it commits, forever
    (the pages of one round, of every chain, in :func:`commit_order`).

    A lost connection is retried with backoff and the tail resumes from its cursors.
    """
    waker = _Waker(store)
    waker.start()
    delay, failing, polled = BACKOFF_MIN_S, False, False
    try:
        while True:
            try:
                pages = {
                    chain: await store.entries_after(cursor, limit=PAGE, filters=filtered_for(filters, chain))
                    for chain, cursor in cursors.items()
                }
            except AuditStoreUnavailable as exc:
                log.warning("tail.unavailable", error=str(exc), retry_in_s=delay, **where(cursors))
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            moved = any(page.cursor > cursors[chain] for chain, page in pages.items())
            if failing:  # the listener's connection most likely went down too
                log.info("tail.resumed", **where(cursors))
                failing, delay = False, BACKOFF_MIN_S
                await waker.restart()
            elif polled and moved and not waker.woken.is_set():
                log.debug("tail.listener_restarted", **where(cursors))
                await waker.restart()  # commits without a notification: the listener is deaf
            polled = False
            entries = [e for page in pages.values() for e in page.entries]
            for entry in sorted(entries, key=commit_order) if len(pages) > 1 else entries:
                emit(entry)
            cursors = {chain: page.cursor for chain, page in pages.items()}
            if all(len(page.entries) < PAGE for page in pages.values()):
                polled = not await waker.wait(poll_s)
    finally:
        await waker.stop()
