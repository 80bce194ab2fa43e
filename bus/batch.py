"""The batch delivery loop: one group on a changing set of streams, a batch at a time.

For consumers whose effect is one transaction per batch (the auditor's COPY, a graph
projector's MERGE). A :class:`~bus.group.GroupConsumer` (the group, reading, own pending
entries, acks) that hands raw entries over undecoded, so a consumer may record envelope
types it has no payload model for.

* the set of streams is looked up again every ``discover_interval_s`` and a group (from
  id ``0``; no MKSTREAM: a deleted stream is not brought back) is created on each new
  one, so new streams are picked up without a restart;
* a batch is at most ``batch_size`` entries; the handler returns the entries it refuses
  (each goes to the dead-letter stream with its reason) and every other entry is acked,
  only after the handler returned;
* a :class:`Staged` handler is pipelined: its pure ``prepare`` (decode, verify, hash)
  runs on the next batch while ``commit`` of the current one waits on its store;
  commits and acks still go one batch at a time, in order;
* a transient failure (``is_transient(error)``: the store is down) is retried in place
  with backoff, for ever: nothing is acked, nothing lost. Any other failure is a failed
  try: the batch is retried after ``DeliveryPolicy.backoff_ms``, as below;
* ``stop()`` stops reading; the batch in hand is finished (or left pending if its
  handler is failing) and nothing else is touched.

Tries, and the poisoned entry
-----------------------------
The try count of an entry (``Entry.attempt``) is its delivery count in the pending list,
so it outlives the process: an entry that kills the process on every delivery (a parser
that crashes, an allocation that gets it OOM-killed) ends in the dead-letter stream just
like one whose handler raises, and it takes no innocent entry with it:

1. The count is the number of the try under way. A new entry is read with count 1. An
   own pending entry is claimed with its count unchanged (``XCLAIM RETRYCOUNT``) and the
   count is raised when its next try starts, before ``prepare`` (``XCLAIM JUSTID
   RETRYCOUNT``: one round trip per batch of retries; new batches pay nothing). An entry
   that only waited in hand while something else took the process down is not charged.
2. A failed try (not transient) raises the ``attempt`` of each entry of the batch, and
   the batch goes back to be tried again, first in line. An entry whose next try would
   pass ``max_deliveries`` goes to the dead-letter stream as ``delivery_cap``: at once if
   its try failed in hand (alone: a batch's failure does not say which entry is bad),
   unhandled when claimed if it died with the process.
3. Suspects go alone. An entry at its third try or later (``min(3, max_deliveries)``),
   that is one in hand through two or more failures or crashes, is a batch of its own,
   tried with nothing else in the pipeline: the batches before it are committed and
   acked, and nothing else is prepared or committed until it is settled. So the
   innocent entries of a poisoned batch commit, each alone, by their third try (under
   the cap), and only the poison keeps failing until the cap. First and second tries
   go in whole batches. (With ``max_deliveries`` 1 there is no second try: a crash
   dead-letters the entries it caught in hand.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .connection import RedisClient, execute_many
from .errors import TRANSIENT
from .group import Backoff, GroupConsumer
from .keys import Keys
from .policy import DeliveryPolicy

log = structlog.get_logger("l9.bus.batch")

#: The try from which an entry is a suspect and goes alone (rule 3 of the module docstring).
SUSPECT_AT = 3


class Entry(NamedTuple):
    """One raw stream entry; ``attempt`` is the number of this try: 1 on the first delivery,
    then the pending list's delivery count (a named tuple: one is made per entry read, and
    a tuple is built several times faster than a frozen dataclass)."""

    stream: str
    entry_id: str
    fields: Mapping[bytes, bytes]
    attempt: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """An entry the handler refuses for good: it is dead-lettered with ``reason``."""

    entry: Entry
    reason: str
    detail: str


BatchHandler = Callable[[Sequence[Entry]], Awaitable[Sequence[Rejected]]]
StreamSource = Callable[[], Awaitable[Iterable[str]]]
P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Staged(Generic[P]):
    """A batch handler in two steps, so the consumer can overlap them across batches.

    ``prepare`` depends on nothing but the batch (decode, verify, hash): it runs on
    batch N+1 while ``commit`` of batch N waits on its store, and again on a retry if
    it raised. It is mostly CPU; awaiting ``anyio.lowlevel.checkpoint()`` between
    slices of the batch lets the commit before it go on as soon as its store answers.
    ``commit`` does the effect and returns the refused entries, as a plain
    :data:`BatchHandler` does. Called directly, a ``Staged`` does both.
    """

    prepare: Callable[[Sequence[Entry]], Awaitable[P]]
    commit: Callable[[Sequence[Entry], P], Awaitable[Sequence[Rejected]]]

    async def __call__(self, batch: Sequence[Entry]) -> Sequence[Rejected]:
        return await self.commit(batch, await self.prepare(batch))


_Settlement = tuple[list[Entry], Sequence[Rejected]]  # a committed batch and the entries it refused


class _Unprepared:
    """Marks a batch not prepared yet (a suspect, or its ``prepare`` failed in the pipeline)."""


_UNPREPARED = _Unprepared()


class BatchConsumer(GroupConsumer):
    """Consumer ``consumer`` of ``group`` on the streams ``streams()`` names: raw entries,
    ``batch_size`` at a time, to ``handler`` (a plain :data:`BatchHandler` or a :class:`Staged`)."""

    event = "batch_consumer"

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        group: str,
        consumer: str,
        streams: StreamSource,
        handler: BatchHandler | Staged[Any],
        policy: DeliveryPolicy | None = None,
        batch_size: int = 1000,
        discover_interval_s: float = 1.0,
        is_transient: Callable[[BaseException], bool] = lambda exc: isinstance(exc, TRANSIENT),
        before_ack: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__(
            redis,
            keys,
            group=group,
            consumer=consumer,
            streams=(),
            policy=policy,
            scan_interval_s=discover_interval_s,
            log=log,
        )
        self.source, self.handler = streams, handler
        self._prepare, self._commit = _stages(handler)
        self.batch_size, self.discover_interval_s = batch_size, discover_interval_s
        self.is_transient, self.before_ack = is_transient, before_ack
        self._suspect_at = min(SUSPECT_AT, self.policy.max_deliveries)
        self._fresh: list[Entry] = []  # read new: first tries
        self._retries: list[Entry] = []  # own pending entries and failed batches, oldest first
        self._filled = anyio.Event()  # the buffer got entries
        self._room = anyio.Event()  # the buffer has room again
        self._handed = 0  # batches handed to the committer and not settled yet
        self._idle = anyio.Event()  # ... set when that falls to 0
        self._to_settle: MemoryObjectSendStream[_Settlement]  # set by _deliver
        self._next_discovery = 0.0

    def stop(self) -> None:
        super().stop()
        self._filled.set()
        self._room.set()
        self._idle.set()

    # -- streams -----------------------------------------------------------------------------
    async def ensure_groups(self) -> None:
        await self.discover()

    async def discover(self) -> list[str]:
        """Look the streams up again; create the group on new ones. Returns the new names."""
        wanted = list(dict.fromkeys(await self.source()))
        new = [n for n in wanted if n not in self._key and await self._create_group(n, mkstream=False)]
        if new:
            self._add_streams(new)
            self.log.info("batch_consumer.streams_added", streams=new, total=len(self.streams))
        self._next_discovery = time.monotonic() + self.discover_interval_s
        return new

    def _lost(self) -> None:
        self._fresh.clear()
        self._retries.clear()
        self._drop_streams()

    # -- the pipeline ----------------------------------------------------------------------------
    async def _deliver(self) -> None:
        """Four tasks: the reader keeps up to two batches read ahead; the preparer takes
        them one at a time and prepares each while the committer works on the one before;
        the committer commits them one at a time, in order; the settler acks (and
        dead-letters) each batch after its commit, while the next one commits. Redis round
        trips and the preparing overlap the commit's own waiting (a COPY, a COMMIT)."""
        to_commit, committing = anyio.create_memory_object_stream[tuple[list[Entry], Any]](0)
        to_settle, settling = anyio.create_memory_object_stream[_Settlement](2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_loop)
            tg.start_soon(self._prepare_batches, to_commit)
            async with anyio.create_task_group() as settler:
                settler.start_soon(self._settle_batches, settling)
                async with to_settle:
                    self._to_settle = to_settle
                    await self._commit_batches(committing)
            tg.cancel_scope.cancel()  # the settler is done: every committed batch is settled

    def _next_batch(self) -> list[Entry] | None:
        """Retries first (they are older): a suspect alone, else the retries before the next
        suspect; then new entries. At most ``batch_size``."""
        retries, size = self._retries, self.batch_size
        if retries:
            n = 1
            if retries[0].attempt < self._suspect_at:
                while n < min(size, len(retries)) and retries[n].attempt < self._suspect_at:
                    n += 1
            batch, self._retries = retries[:n], retries[n:]
            return batch
        if self._fresh:
            batch, self._fresh = self._fresh[:size], self._fresh[size:]
            return batch
        return None

    async def _prepare_batches(self, send: MemoryObjectSendStream[tuple[list[Entry], Any]]) -> None:
        async with send:
            while not self._stopping:
                batch = self._next_batch()
                if batch is None:
                    self._filled = anyio.Event()
                    await self._filled.wait()
                    continue
                self._room.set()
                if batch[0].attempt >= self._suspect_at:
                    await self._alone(send, batch)
                    continue
                if batch[0].attempt > 1:
                    await self._count_tries(batch)
                prepared = await self._try_prepare(batch)
                self._handed += 1
                await send.send((batch, prepared))

    async def _alone(self, send: MemoryObjectSendStream[tuple[list[Entry], Any]], batch: list[Entry]) -> None:
        """A suspect (rule 3): tried with nothing else in the pipeline, before it or beside it."""
        await self._until_idle()
        if self._stopping:
            return
        await self._count_tries(batch)
        self._handed += 1
        await send.send((batch, _UNPREPARED))
        await self._until_idle()

    async def _until_idle(self) -> None:
        while self._handed and not self._stopping:
            self._idle = anyio.Event()
            await self._idle.wait()

    def _done(self) -> None:
        """A batch handed to the committer is settled, dead-lettered or back for a retry."""
        self._handed -= 1
        if not self._handed:
            self._idle.set()

    async def _count_tries(self, batch: list[Entry]) -> None:
        """Set each entry's delivery count in the pending list to the number of the try about
        to start (rule 1), so that a crash during it counts."""
        ids: dict[tuple[str, int], list[str]] = {}
        for e in batch:
            ids.setdefault((e.stream, e.attempt), []).append(e.entry_id)
        commands = [
            ("XCLAIM", self.keys.stream(s), self.group, self.consumer, 0, *i, "RETRYCOUNT", n, "JUSTID")
            for (s, n), i in ids.items()
        ]
        try:
            await execute_many(self.redis, commands)
        except TRANSIENT as exc:  # the try goes ahead; the pending list keeps the last count
            self.log.warning("batch_consumer.count_failed", error=str(exc))

    async def _try_prepare(self, batch: list[Entry]) -> Any:
        try:
            return await self._prepare(batch)
        except Exception as exc:  # the committer's retry loop runs it again, with backoff
            self.log.warning("batch_consumer.prepare_failed", error=f"{type(exc).__name__}: {exc}")
            return _UNPREPARED

    async def _commit_batches(self, receive: MemoryObjectReceiveStream[tuple[list[Entry], Any]]) -> None:
        async for batch, prepared in receive:  # ends when the preparer stops
            if self._stopping:
                return  # left pending for the next owner
            settlement = await self._handle(batch, prepared)
            if settlement is None:
                self._done()
            else:
                await self._to_settle.send(settlement)

    async def _settle_batches(self, settling: MemoryObjectReceiveStream[_Settlement]) -> None:
        async with settling:
            async for batch, rejected in settling:  # ends when the committer stops
                if self.before_ack is not None:
                    self.before_ack()
                with anyio.CancelScope(shield=True):
                    await self._settle(batch, rejected)
                self._done()

    # -- reading -------------------------------------------------------------------------------------
    def _buffered(self) -> int:
        return len(self._fresh) + len(self._retries)

    async def _wait_for_room(self) -> None:
        while self._buffered() >= 2 * self.batch_size and not self._stopping:
            self._room = anyio.Event()
            await self._room.wait()

    async def _read_new(self) -> None:
        if time.monotonic() >= self._next_discovery:
            await self.discover()
        if not self.streams:
            with anyio.move_on_after(self.discover_interval_s):
                await self._stopped.wait()
            return
        # COUNT applies per stream: what one read brings beyond a batch waits in the buffer
        # (in flight, its lease kept) for the next one, so busy streams fill whole batches.
        reply = await self._xreadgroup(2 * self.batch_size - self._buffered())
        if not reply:
            return
        now, in_flight, fresh, names = time.monotonic(), self.in_flight, self._fresh, self._names
        for key, entries in reply:
            stream = names[key]
            for raw_id, fields in entries:  # thousands a second: no call that can be spared
                entry_id = raw_id.decode() if type(raw_id) is bytes else str(raw_id)
                in_flight[(stream, entry_id)] = now
                fresh.append(Entry(stream, entry_id, fields or {}, 1))
        self._filled.set()

    async def _pending_room(self) -> int:
        return self.batch_size - self._buffered()

    async def _take(self, stream: str, rows: Sequence[Mapping[str, Any]]) -> None:
        claimed = await self._claim(stream, rows, count_now=False)
        now = time.monotonic()
        for entry_id, fields, attempt in claimed:
            self.in_flight[(stream, entry_id)] = now
            self._retries.append(Entry(stream, entry_id, fields, attempt))
        if claimed:
            self._filled.set()

    # -- handling and settling -------------------------------------------------------------------
    async def _handle(self, batch: list[Entry], prepared: Any) -> _Settlement | None:
        """Prepare (unless it was) and commit ``batch``: a transient failure is retried here, for
        ever; any other one is a failed try (:meth:`_failed`). None: nothing left to settle."""
        backoff = Backoff()
        while True:
            try:
                if prepared is _UNPREPARED:
                    prepared = await self._prepare(batch)
                return batch, await self._commit(batch, prepared)
            except Exception as exc:
                transient = self.is_transient(exc)
                attempt = max(e.attempt for e in batch)
                self.log.warning(
                    "batch_consumer.handler_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    entries=len(batch),
                    transient=transient,
                    attempt=attempt,
                    retry_in_s=backoff.next if transient else self.policy.backoff_ms(attempt) / 1000,
                )
                if self._stopping:
                    self._forget(batch)  # left pending for the next owner
                    return None
                if not transient:
                    await self._failed(batch, exc)
                    return None
                await backoff.sleep(self._stopped)

    async def _failed(self, batch: list[Entry], exc: Exception) -> None:
        """A failed try (rule 2): a single entry at the cap is dead-lettered; otherwise the
        entries go back to be tried again, first in line, after a backoff."""
        attempt = max(e.attempt for e in batch)
        if len(batch) == 1 and attempt >= self.policy.max_deliveries:
            error = f"{type(exc).__name__}: {exc}"
            with anyio.CancelScope(shield=True):
                await self._dead_letter(
                    [Rejected(batch[0], "delivery_cap", f"failed {attempt} time(s); last error: {error}")]
                )
            return
        with anyio.move_on_after(self.policy.backoff_ms(attempt) / 1000):
            await self._stopped.wait()
        if self._stopping:
            self._forget(batch)  # left pending for the next owner
            return
        self._retries[:0] = [e._replace(attempt=e.attempt + 1) for e in batch]
        self._filled.set()

    async def _settle(self, batch: list[Entry], rejected: Sequence[Rejected]) -> None:
        """Dead-letter the refused entries and ack the rest; Redis trouble is retried."""
        if rejected:
            await self._dead_letter(rejected)
            refused = {(r.entry.stream, r.entry.entry_id) for r in rejected}
            batch = [e for e in batch if (e.stream, e.entry_id) not in refused]
        acks = self._acks
        for entry in batch:
            acks.setdefault(entry.stream, []).append(entry.entry_id)
        backoff = Backoff()
        while not await self._flush_acks():  # acked entries leave ``in_flight`` there
            if self._stopping:
                self.log.warning("batch_consumer.ack_abandoned")
                self._forget(batch)  # still pending: the next owner appends them again, deduped
                return
            await backoff.sleep()

    async def _dead_letter(self, rejected: Sequence[Rejected]) -> None:
        """Each entry to the dead-letter stream (acked there); Redis trouble is retried."""
        backoff = Backoff()
        for r in rejected:
            e = r.entry
            while True:
                try:
                    await self.dead.letter(e.stream, e.entry_id, e.fields, r.reason, r.detail, e.attempt)
                    break
                except TRANSIENT as exc:
                    if self._stopping:
                        self.log.warning("batch_consumer.ack_abandoned", error=str(exc))
                        break  # still pending: dead-lettered by the next owner
                    self.log.warning("batch_consumer.ack_failed", error=str(exc), retry_in_s=backoff.next)
                    await backoff.sleep()
        self._forget(r.entry for r in rejected)

    def _forget(self, batch: Iterable[Entry]) -> None:
        for entry in batch:
            self.in_flight.pop((entry.stream, entry.entry_id), None)


async def _no_preparation(batch: Sequence[Entry]) -> None:
    return None


def _stages(
    handler: BatchHandler | Staged[Any],
) -> tuple[
    Callable[[Sequence[Entry]], Awaitable[Any]],
    Callable[[Sequence[Entry], Any], Awaitable[Sequence[Rejected]]],
]:
    """``prepare`` and ``commit`` of a handler; a plain handler has nothing to prepare."""
    if isinstance(handler, Staged):
        return handler.prepare, handler.commit

    async def commit(batch: Sequence[Entry], _prepared: None) -> Sequence[Rejected]:
        return await handler(batch)

    return _no_preparation, commit
