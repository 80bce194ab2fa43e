"""The batch delivery loop: one group on a changing set of streams, a batch at a time.

For consumers whose effect is one transaction per batch (the auditor's COPY,
a graph projector's MERGE). Raw entries are handed over undecoded, so a
consumer may record envelope types it has no payload model for.

* at start the consumer drains its own pending entries, then reads ``>``;
  the set of streams is looked up again every ``discover_interval_s`` and a
  group (from id ``0``) is created on each new one, so new streams are
  picked up without a restart;
* a batch is at most ``batch_size`` entries; the handler returns the entries
  it refuses (each goes to the dead-letter stream with its reason) and every
  other entry is acked, only after the handler returned;
* a :class:`Staged` handler is pipelined: its pure ``prepare`` (decode, verify,
  hash) runs on the next batch while ``commit`` of the current one waits on
  its store; commits and acks still go one batch at a time, in read order;
* a handler failure keeps the batch pending and retries it with backoff:
  for ever while ``is_transient(error)`` (the store is down: nothing is acked,
  nothing lost), else ``max_deliveries`` times before the batch is split and
  each entry retried alone, so one poisoned entry is dead-lettered, not the batch;
* entries of dead consumers and leases are handled by ``bus.maintenance``;
  reclaimed entries are picked up by a periodic scan of the own pending list;
* ``stop()`` stops reading; the batch in hand is finished (or left pending if
  its handler is failing) and nothing else is touched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import anyio
import redis.asyncio as aioredis
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.exceptions import ResponseError

from .consumer import Backoff
from .deadletter import DeadLetters
from .errors import TRANSIENT
from .keys import Keys
from .maintenance import Maintenance
from .policy import DeliveryPolicy

log = structlog.get_logger("l9.bus.batch")


class Entry(NamedTuple):
    """One raw stream entry; ``attempt`` is 1 on its first delivery (a named tuple: one is
    made per entry read, and a tuple is built several times faster than a frozen dataclass)."""

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
    """Marks a batch whose ``prepare`` failed in the pipeline: it runs again in the retry loop."""


_UNPREPARED = _Unprepared()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class BatchConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
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
        self.redis, self.keys, self.group, self.consumer = redis, keys, group, consumer
        self.source, self.handler = streams, handler
        self._prepare, self._commit = _stages(handler)
        self.policy = policy or DeliveryPolicy()
        self.batch_size, self.discover_interval_s = batch_size, discover_interval_s
        self.is_transient, self.before_ack = is_transient, before_ack
        self.streams: list[str] = []  # read by Maintenance
        self.in_flight: dict[tuple[str, str], float] = {}  # (stream, id) -> last lease time
        self.dead = DeadLetters(redis, keys, group, consumer)
        self.maintenance = Maintenance(self)
        self._buffer: list[Entry] = []
        self._stopping = False
        self._stopped = anyio.Event()
        self._filled = anyio.Event()  # the buffer got entries
        self._room = anyio.Event()  # the buffer has room again
        self._read_scope: anyio.CancelScope | None = None
        self._to_settle: MemoryObjectSendStream[_Settlement]  # set by _loop
        self._started = anyio.Event()
        self._next_discovery = 0.0
        self.log = log.bind(group=group, consumer=consumer)

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until ``stop()``."""
        async with anyio.create_task_group() as side:
            side.start_soon(self.maintenance.run)
            self._started.set()
            self.log.info("batch_consumer.started", batch_size=self.batch_size)
            await self._loop()
            with anyio.CancelScope(shield=True):
                await self.maintenance.release()
            side.cancel_scope.cancel()
        self.log.info("batch_consumer.stopped", left_pending=len(self.in_flight))

    def stop(self) -> None:
        self._stopping = True
        self._stopped.set()
        self._filled.set()
        self._room.set()
        if self._read_scope is not None:
            self._read_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_started(self) -> None:
        await self._started.wait()

    # -- streams -----------------------------------------------------------------------------
    async def discover(self) -> list[str]:
        """Look the streams up again; create the group on new ones. Returns the new names."""
        wanted = list(dict.fromkeys(await self.source()))
        new = [name for name in wanted if name not in self.streams and await self._create_group(name)]
        if new:
            self.streams.extend(new)
            self.log.info("batch_consumer.streams_added", streams=new, total=len(self.streams))
        self._next_discovery = time.monotonic() + self.discover_interval_s
        return new

    async def _create_group(self, name: str) -> bool:
        """The group on an existing stream, from its first entry; False while the stream does
        not exist (a deleted reply stream is not brought back; a new one is found next time)."""
        try:
            await self.redis.xgroup_create(self.keys.stream(name), self.group, id="0")
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return True
            if "requires the key to exist" in str(exc):
                return False
            raise
        return True

    async def _recover(self, exc: ResponseError) -> None:
        """A group or stream vanished (Redis flushed, a stream deleted): recreate what is wanted."""
        self.log.error(
            "batch_consumer.group_missing",
            error=str(exc),
            hint="Redis restarted or was flushed, or a stream was deleted; recreating the groups",
        )
        self.in_flight.clear()
        self._buffer.clear()
        self.streams = []
        await self.discover()

    # -- the loop ----------------------------------------------------------------------------
    async def _loop(self) -> None:
        """Four tasks: the reader keeps up to two batches read ahead; the preparer takes
        them one at a time and prepares each while the committer works on the one before;
        the committer commits them one at a time, in order; the settler acks (and
        dead-letters) each batch after its commit, while the next one commits. Redis round
        trips and the preparing overlap the commit's own waiting (a COPY, a COMMIT)."""
        to_commit, committing = anyio.create_memory_object_stream[tuple[list[Entry], Any]](0)
        to_settle, settling = anyio.create_memory_object_stream[_Settlement](2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reader)
            tg.start_soon(self._prepare_batches, to_commit)
            async with anyio.create_task_group() as settler:
                settler.start_soon(self._settle_batches, settling)
                async with to_settle:
                    self._to_settle = to_settle
                    await self._commit_batches(committing)
            tg.cancel_scope.cancel()  # the settler is done: every committed batch is settled

    async def _prepare_batches(self, send: MemoryObjectSendStream[tuple[list[Entry], Any]]) -> None:
        async with send:
            while not self._stopping:
                if not self._buffer:
                    self._filled = anyio.Event()
                    await self._filled.wait()
                    continue
                batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
                self._room.set()
                await send.send((batch, await self._try_prepare(batch)))

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
            await self._handle(batch, prepared)

    async def _settle_batches(self, settling: MemoryObjectReceiveStream[_Settlement]) -> None:
        async with settling:
            async for batch, rejected in settling:  # ends when the committer stops
                if self.before_ack is not None:
                    self.before_ack()
                with anyio.CancelScope(shield=True):
                    await self._settle(batch, rejected)

    async def _reader(self) -> None:
        """Own pending entries first, then new ones; Redis trouble means backoff, never a crash."""
        backoff, drained = Backoff(), False
        next_scan = time.monotonic() + self.discover_interval_s
        while not self._stopping:
            if len(self._buffer) >= 2 * self.batch_size:
                self._room = anyio.Event()
                await self._room.wait()
                continue
            try:
                if time.monotonic() >= self._next_discovery:
                    await self.discover()
                if not drained or time.monotonic() >= next_scan:
                    await self._fill_from_pending()
                    drained, next_scan = True, time.monotonic() + self.discover_interval_s
                if self.streams:
                    await self._read_new()
                else:
                    await Backoff(self.discover_interval_s).sleep(self._stopped)
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._recover(exc)
                await backoff.sleep(self._stopped)
            except TRANSIENT as exc:
                self.log.warning("batch_consumer.redis_unavailable", error=str(exc), retry_in_s=backoff.next)
                await backoff.sleep(self._stopped)
            if self._buffer:
                self._filled.set()

    async def _read_new(self) -> None:
        # COUNT applies per stream: what one read brings beyond a batch waits in the buffer
        # (in flight, its lease kept) for the next one, so busy streams fill whole batches.
        count = max(1, 2 * self.batch_size - len(self._buffer))
        reply: Any = None
        with anyio.CancelScope() as self._read_scope:
            if not self._stopping:
                reply = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    dict.fromkeys((self.keys.stream(s) for s in self.streams), ">"),
                    count=count,
                    block=max(1, self.policy.block_ms),
                )
        self._read_scope = None
        now, in_flight, buffer = time.monotonic(), self.in_flight, self._buffer
        for key, entries in reply or ():
            stream = self.keys.name_of(_text(key))
            for raw_id, fields in entries:  # thousands a second: no call that can be spared
                entry_id = raw_id.decode() if type(raw_id) is bytes else str(raw_id)
                in_flight[(stream, entry_id)] = now
                buffer.append(Entry(stream, entry_id, fields or {}, 1))

    async def _fill_from_pending(self) -> None:
        """Own pending entries not in hand: left by a previous life of this consumer name,
        reclaimed from a dead consumer, or not settled after a failure."""
        for stream in list(self.streams):
            key, cursor = self.keys.stream(stream), "-"
            while len(self._buffer) < self.batch_size:
                rows = await self.redis.xpending_range(
                    key, self.group, min=cursor, max="+", count=1000, consumername=self.consumer
                )
                if not rows:
                    break
                cursor = "(" + _text(rows[-1]["message_id"])
                todo = {
                    _text(r["message_id"]): int(r["times_delivered"]) + 1
                    for r in rows
                    if (stream, _text(r["message_id"])) not in self.in_flight
                }
                if todo:
                    await self._claim(stream, key, todo)
                if len(rows) < 1000:
                    break

    async def _claim(self, stream: str, key: str, todo: Mapping[str, int]) -> None:
        claimed: Any = await self.redis.xclaim(key, self.group, self.consumer, 0, list(todo))
        present = set()
        now = time.monotonic()
        for raw_id, fields in claimed:
            entry_id = _text(raw_id)
            present.add(entry_id)
            self.in_flight[(stream, entry_id)] = now
            self._buffer.append(Entry(stream, entry_id, fields or {}, todo[entry_id]))
        gone = [i for i in todo if i not in present]
        if gone:  # deleted (trimmed) while pending: nothing is left to handle
            await self.redis.xack(key, self.group, *gone)

    # -- handling and settling -------------------------------------------------------------------
    async def _handle(self, batch: list[Entry], prepared: Any = _UNPREPARED) -> None:
        backoff, failures = Backoff(), 0
        while True:
            try:
                if prepared is _UNPREPARED:
                    prepared = await self._prepare(batch)
                rejected = await self._commit(batch, prepared)
                break
            except Exception as exc:
                transient = self.is_transient(exc)
                failures += 0 if transient else 1
                self.log.warning(
                    "batch_consumer.handler_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    entries=len(batch),
                    transient=transient,
                    failures=failures,
                    retry_in_s=backoff.next,
                )
                if self._stopping:
                    self._forget(batch)  # left pending for the next owner
                    return
                if failures >= self.policy.max_deliveries:
                    await self._give_up(batch, exc)
                    return
                await backoff.sleep(self._stopped)
        await self._to_settle.send((batch, rejected))

    async def _give_up(self, batch: list[Entry], exc: Exception) -> None:
        """The batch keeps failing: alone, each entry either passes or is dead-lettered."""
        if len(batch) > 1:
            self.log.warning("batch_consumer.splitting", entries=len(batch))
            for entry in batch:
                await self._handle([entry])
            return
        (entry,) = batch
        error = f"{type(exc).__name__}: {exc}"
        with anyio.CancelScope(shield=True):
            await self._settle([], [Rejected(entry, "delivery_cap", f"handler failed: {error}")])
        self._forget(batch)

    async def _settle(self, batch: Sequence[Entry], rejected: Sequence[Rejected]) -> None:
        """Dead-letter the refused entries and ack the rest; Redis trouble is retried."""
        refused = {(r.entry.stream, r.entry.entry_id) for r in rejected}
        acks: dict[str, list[str]] = {}
        for entry in batch:
            if (entry.stream, entry.entry_id) not in refused:
                acks.setdefault(entry.stream, []).append(entry.entry_id)
        backoff, to_letter = Backoff(), list(rejected)
        while True:
            try:
                while to_letter:
                    e, r = to_letter[0].entry, to_letter[0]
                    await self.dead.letter(e.stream, e.entry_id, e.fields, r.reason, r.detail, e.attempt)
                    to_letter.pop(0)
                if acks:
                    pipe = self.redis.pipeline(transaction=False)
                    for stream, ids in acks.items():
                        pipe.xack(self.keys.stream(stream), self.group, *ids)
                    await pipe.execute()
                break
            except TRANSIENT as exc:
                if self._stopping:
                    self.log.warning("batch_consumer.ack_abandoned", error=str(exc))
                    break  # still pending: the next owner appends them again, deduped
                self.log.warning("batch_consumer.ack_failed", error=str(exc), retry_in_s=backoff.next)
                await backoff.sleep()
        self._forget(batch)

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
