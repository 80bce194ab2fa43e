"""What both delivery loops share: one consumer in one group, reading, reclaiming, acking.

:class:`~bus.StreamConsumer` (``bus.consumer``: entry by entry, to concurrent handlers)
and :class:`~bus.BatchConsumer` (``bus.batch``: a batch at a time, to one transaction)
are both a :class:`GroupConsumer`, which owns everything that talks to the group:

* the group on each stream, from its first entry (``XGROUP CREATE``, with ``MKSTREAM``
  or, for streams that must exist already, without);
* the read loop: own pending entries first (a previous life of this consumer name), then
  new ones (``XREADGROUP >``) and, every ``scan_interval_s``, the own pending list again
  (failed and reclaimed entries); Redis trouble means backoff, never a crash, and a lost
  group (``NOGROUP``: Redis restarted or flushed) is recreated, logged loudly, without a
  hot loop;
* taking own pending entries into hand (``XCLAIM``): one already delivered
  ``max_deliveries`` times goes to the dead-letter stream unhandled, for the pending
  list's delivery count is the try count (``attempt``) in both loops;
* acks, queued by the loops and flushed in one round trip (``execute_many``), each with
  the envelope ids it records in the group's window of handled ids (``bus.dedupe``) in
  one MULTI/EXEC;
* heartbeat, leases and the entries of dead consumers (``bus.maintenance``);
* ``run`` / ``stop``: ``stop()`` stops reading; each loop finishes or abandons what it
  holds (see its module) and the rest stays pending for the next owner.

A loop supplies its pipeline (``_deliver``, which runs ``_read_loop``), how entries come
into hand (``_read_new``, ``_take``, ``_pending_room``, ``_wait_for_room``), which groups
it wants (``ensure_groups``) and what a lost group takes with it (``_lost``).
"""

from __future__ import annotations

import abc
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import anyio
from redis.exceptions import ResponseError

from .connection import RedisClient, as_text, execute_many, is_cluster, slot_of
from .deadletter import DeadLetters
from .dedupe import HandledWindow
from .errors import TRANSIENT, error_code, is_busygroup, is_missing_stream, is_nogroup
from .keys import Keys
from .maintenance import Maintenance
from .policy import DeliveryPolicy
from .slots import SlotReads, read_in_slot, xreadgroup_command

Fields = Mapping[bytes, bytes]
#: An own pending entry taken into hand: its id, its fields and the number of its next try.
Claimed = tuple[str, Fields, int]


class Emitting(NamedTuple):
    """An entry acked in one MULTI/EXEC with the envelopes its handler emitted: its stream and
    id, their XADDs (and streams-index SADDs), whether it was retried (its error note is
    deleted there too), and its envelope id to record in the window of handled ids (None:
    nothing to record)."""

    stream: str
    entry_id: str
    emits: list[tuple[Any, ...]]
    retried: bool
    handled: str | None


class Backoff:
    """Exponential sleep for a failing loop: 0.1 s doubling to ``cap``."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.next = first, cap, first

    async def sleep(self, until: anyio.Event | None = None) -> None:
        """Sleep the current delay (less if ``until`` is set first), then double it."""
        with anyio.move_on_after(self.next):
            await (until.wait() if until is not None else anyio.sleep_forever())
        self.next = min(self.cap, self.next * 2)

    def reset(self) -> None:
        self.next = self.first


class GroupConsumer(abc.ABC):
    """One consumer in one group: the group, the read loop, own pending entries, acks."""

    #: The prefix of this loop's log events (``consumer.group_missing``, ...).
    event = "consumer"

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        group: str,
        consumer: str,
        streams: Iterable[str],
        policy: DeliveryPolicy | None,
        scan_interval_s: float | None,
        log: Any,
    ) -> None:
        self.redis, self.keys, self.group, self.consumer = redis, keys, group, consumer
        self.policy = policy or DeliveryPolicy()
        self.streams: list[str] = []  # read by Maintenance
        self._key: dict[str, str] = {}  # stream name -> key
        self._names: dict[str | bytes, str] = {}  # key, as str and as Redis returns it -> name
        self._read_ids: dict[Any, Any] = {}  # XREADGROUP's streams argument: key -> ">"
        #: on a cluster, the streams argument of each slot (one XREADGROUP may not span slots)
        self._cluster = is_cluster(redis)
        self._by_slot: dict[int, dict[Any, Any]] = {}
        self._slot_reads = SlotReads()
        self._add_streams(streams)
        self.in_flight: dict[tuple[str, str], float] = {}  # (stream, id) -> last lease time
        self._acks: dict[str, list[str]] = {}  # stream -> ids to XACK
        self._retried: dict[str, list[str]] = {}  # ... whose error note goes with the ack
        self._handled: dict[str, list[str]] = {}  # stream -> envelope ids recorded with its XACK
        self._with_acks: list[tuple[Any, ...]] = []  # commands sent just before the XACKs
        self._emitting: list[Emitting] = []
        #: the group's window of handled ids, when the loop keeps one (``bus.dedupe``)
        self.window: HandledWindow | None = None
        #: called at the top of every round of the read loop, a round that backs off from an
        #: unreachable Redis included (``bus.metrics``: when the loop last went round)
        self.on_round: Callable[[], None] | None = None
        self._ack_wanted = anyio.Event()
        self._scan_interval_s = self.policy.scan_interval_s if scan_interval_s is None else scan_interval_s
        self._read_scope = anyio.CancelScope()
        self._stopping = False
        self._stopped = anyio.Event()
        self._started = anyio.Event()
        self.dead = DeadLetters(redis, keys, group, consumer)
        self.maintenance = Maintenance(self)
        self.log = log.bind(group=group, consumer=consumer)

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until ``stop()``; then drain and return."""
        if not await self._start_groups():  # stopped while Redis was unavailable
            with anyio.CancelScope(shield=True), contextlib.suppress(*TRANSIENT):
                await self.maintenance.release()
            return
        async with anyio.create_task_group() as side:
            side.start_soon(self._ack_loop)
            side.start_soon(self.maintenance.run)
            self._started.set()
            self.log.info(f"{self.event}.started", streams=self.streams)
            try:
                await self._deliver()
            finally:
                self._slot_reads.cancel()
            with anyio.CancelScope(shield=True):
                await self._flush_acks()
            side.cancel_scope.cancel()
        # released once the heartbeat task is over: a beat still in flight can no longer bring
        # the key back after its DEL (the name would look taken for a TTL after a clean stop)
        with anyio.CancelScope(shield=True):
            await self.maintenance.release()
        self.log.info(f"{self.event}.stopped", left_pending=len(self.in_flight))

    async def _start_groups(self) -> bool:
        """:meth:`ensure_groups`, again with backoff while Redis is unavailable (a consumer
        started during an outage or a failover waits for it, it does not exit); False if
        ``stop()`` came first."""
        backoff = Backoff()
        while not self._stopping:
            try:
                await self.ensure_groups()
                return True
            except TRANSIENT as exc:
                self.log.warning(f"{self.event}.redis_unavailable", error=str(exc), retry_in_s=backoff.next)
                await backoff.sleep(self._stopped)
        return False

    def stop(self) -> None:
        """Stop reading; what is in hand drains (see the loop's module)."""
        self._stopping = True
        self._stopped.set()
        self._read_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_started(self) -> None:
        await self._started.wait()

    @abc.abstractmethod
    async def ensure_groups(self) -> None:
        """Create the groups this consumer reads (at start, and after a group was lost)."""

    @abc.abstractmethod
    async def _deliver(self) -> None:
        """The loop's pipeline, until ``stop()``; it runs :meth:`_read_loop`."""

    # -- streams and groups -----------------------------------------------------------------
    def _add_streams(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._key:
                key = self.keys.stream(name)
                self.streams.append(name)
                self._key[name], self._read_ids[key] = key, ">"
                self._names[key] = self._names[key.encode()] = name
                if self._cluster:
                    self._by_slot.setdefault(slot_of(key), {})[key] = ">"

    def retire_streams(self, names: Iterable[str]) -> None:
        """Read ``names`` no more (a reader whose share of the streams shrank): reads under way
        are cut short, entries already in hand are still handled and acked, and what the group
        holds pending for this consumer there is left to whoever reads those streams now (a
        pending scan claims it once its lease lapsed)."""
        gone = [n for n in names if n in self._key]
        for name in gone:
            key = self._key.pop(name)
            self.streams.remove(name)
            self._read_ids.pop(key, None)
            if self._cluster:
                self._by_slot.get(slot_of(key), {}).pop(key, None)
        if gone:
            self._by_slot = {slot: ids for slot, ids in self._by_slot.items() if ids}
            self._slot_reads.cancel()
            self.log.info(f"{self.event}.streams_retired", streams=gone, total=len(self.streams))

    def _drop_streams(self) -> None:
        self.streams.clear()
        self._key.clear()
        self._names.clear()
        self._read_ids.clear()
        self._by_slot.clear()
        self._slot_reads.cancel()

    async def _create_group(self, stream: str, *, mkstream: bool) -> bool:
        """The group on ``stream``, from its first entry. With ``mkstream`` a missing stream is
        created; without, False while the stream does not exist (a deleted reply stream is
        not brought back)."""
        try:
            await self.redis.xgroup_create(self.keys.stream(stream), self.group, id="0", mkstream=mkstream)
        except ResponseError as exc:
            if is_busygroup(exc):
                return True
            if not mkstream and is_missing_stream(exc):
                return False
            raise
        return True

    # -- the read loop --------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        """Own pending entries first, then new ones; Redis trouble means backoff, never a crash.
        ``stop()`` cancels it wherever it is: what it was taking stays pending."""
        backoff, drained = Backoff(), False
        next_scan = time.monotonic() + self._scan_interval_s
        with self._read_scope:
            while not self._stopping:
                if self.on_round is not None:
                    self.on_round()
                await self._wait_for_room()
                try:
                    if not drained or time.monotonic() >= next_scan:
                        await (self._scan_pending() if drained else self._drain_own_pending())
                        drained, next_scan = True, time.monotonic() + self._scan_interval_s
                    await self._read_new()
                    backoff.reset()
                except TRANSIENT as exc:  # before ResponseError: some cluster states are replies
                    retry_in_s = backoff.next
                    self.log.warning(f"{self.event}.redis_unavailable", error=str(exc), retry_in_s=retry_in_s)
                    await backoff.sleep(self._stopped)
                except ResponseError as exc:
                    if not is_nogroup(exc):
                        raise
                    await self._recover_group(exc, backoff)

    @abc.abstractmethod
    async def _wait_for_room(self) -> None:
        """Until the loop can take more entries into hand."""

    @abc.abstractmethod
    async def _read_new(self) -> None:
        """Read new entries (:meth:`_xreadgroup`) and take them into hand."""

    async def _xreadgroup(self, count: int) -> Any:
        """``XREADGROUP >`` on every stream, blocking at most until the next pending scan.

        On a cluster, each slot's streams are read on the slot's master directly
        (``bus.slots.read_in_slot``), those of several slots with one XREADGROUP per slot,
        all blocking at once (``bus.slots.SlotReads``)."""
        block = max(1, min(self.policy.block_ms, int(self._scan_interval_s * 1000)))
        count = max(1, count)
        if not self._cluster:
            return await self.redis.xreadgroup(
                self.group, self.consumer, self._read_ids, count=count, block=block
            )
        cluster: Any = self.redis

        def reader(slot: int, ids: dict[Any, Any]) -> Callable[[], Awaitable[Any]]:
            command = xreadgroup_command(self.group, self.consumer, ids, count, block)
            return lambda: read_in_slot(cluster, slot, *command)

        return await self._slot_reads.next(
            {slot: reader(slot, dict(ids)) for slot, ids in self._by_slot.items()}
        )

    async def _recover_group(self, exc: ResponseError, backoff: Backoff) -> None:
        """A group or stream vanished: what was in hand vanished with it; recreate, with backoff."""
        self.log.error(
            f"{self.event}.group_missing",
            error=str(exc),
            hint="Redis restarted or was flushed, or a stream was deleted; recreating the consumer group",
            retry_in_s=backoff.next,
        )
        self.in_flight.clear()  # those entries no longer exist
        self._lost()
        try:
            await self.ensure_groups()
        except TRANSIENT as err:
            self.log.warning(f"{self.event}.redis_unavailable", error=str(err))
        await backoff.sleep(self._stopped)

    def _lost(self) -> None:  # noqa: B027 (an optional hook, no-op by default)
        """Forget what was in hand: the group it was read from is gone."""

    # -- own pending entries ------------------------------------------------------------------------
    async def _drain_own_pending(self) -> None:
        """Own pending entries not in hand, oldest first: left by a previous life of this
        consumer name, reclaimed from a dead consumer, or failed and due again."""
        for stream in list(self.streams):
            cursor = "-"
            while not self._stopping:
                room = await self._pending_room()
                if room <= 0:
                    break
                rows = await self._own_pending(stream, cursor, room)
                if not rows:
                    break
                cursor = "(" + as_text(rows[-1]["message_id"])
                await self._take(stream, rows)
                if len(rows) < room:
                    break

    async def _scan_pending(self) -> None:
        """The periodic look at the own pending list (by default: the drain again)."""
        await self._drain_own_pending()

    @abc.abstractmethod
    async def _pending_room(self) -> int:
        """How many own pending entries the loop can take into hand now."""

    @abc.abstractmethod
    async def _take(self, stream: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Take own pending ``rows`` of ``stream`` into hand (see :meth:`_claim`)."""

    async def _own_pending(self, stream: str, start: str, count: int, idle: int | None = None) -> Any:
        return await self.redis.xpending_range(
            self._key[stream],
            self.group,
            min=start,
            max="+",
            count=max(1, count),
            consumername=self.consumer,
            idle=idle,
        )

    async def _claim(
        self, stream: str, rows: Sequence[Mapping[str, Any]], *, count_now: bool
    ) -> list[Claimed]:
        """XCLAIM own pending ``rows`` not in hand; each comes with the number of its next try
        (times delivered + 1). An entry delivered ``max_deliveries`` times already is
        dead-lettered instead, unhandled; one deleted while pending is acked.

        ``count_now``: the claim counts the delivery (the per-entry loop hands the entry to a
        worker at once). Else the count is left as it is (XCLAIM RETRYCOUNT) and the loop
        counts the try when it starts it (``bus.batch``): an entry that waits in hand while
        another one takes the process down is not charged a delivery.
        """
        key, cap = self._key[stream], self.policy.max_deliveries
        todo: dict[str, int] = {}
        for row in rows:
            entry_id = as_text(row["message_id"])
            if (stream, entry_id) in self.in_flight:
                continue
            delivered = int(row["times_delivered"])
            if delivered >= cap:
                await self.dead.over_cap(stream, key, entry_id, delivered)
            else:
                todo[entry_id] = delivered + 1
        if not todo:
            return []
        replies: list[Any]
        if count_now:
            replies = [await self.redis.xclaim(key, self.group, self.consumer, 0, list(todo))]
        else:
            by_count: dict[int, list[Any]] = {}
            for entry_id, attempt in todo.items():
                by_count.setdefault(attempt - 1, []).append(entry_id)
            replies = [
                await self.redis.xclaim(key, self.group, self.consumer, 0, ids, retrycount=delivered)
                for delivered, ids in by_count.items()
            ]
        claimed: list[Claimed] = []
        for reply in replies:
            for raw_id, fields in reply:
                if raw_id is not None and fields is not None:
                    entry_id = as_text(raw_id)
                    claimed.append((entry_id, fields, todo.pop(entry_id)))
        if todo:  # deleted (trimmed) while pending: nothing is left to handle
            await self.redis.xack(key, self.group, *todo)
        return claimed

    # -- acks -------------------------------------------------------------------------------------------
    async def _ack_loop(self) -> None:
        backoff = Backoff()
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted = anyio.Event()
            with anyio.CancelScope(shield=True):
                ok = await self._flush_acks()
            if ok:
                backoff.reset()
            else:
                self._ack_wanted.set()
                await backoff.sleep()

    async def _flush_acks(self) -> bool:
        """XACK everything queued, after the commands riding with it (``Delivery.with_ack``),
        and each entry with envelopes to publish in one MULTI/EXEC with them
        (``Delivery.publish_with_ack``), all in one round trip; False if Redis failed
        (everything stays queued for the next try). The envelope ids an ack records in the
        window of handled ids go in the MULTI/EXEC of its XACK."""
        if not self._acks and not self._emitting:
            return True
        acks, self._acks = self._acks, {}
        retried, self._retried = self._retried, {}
        handled, self._handled = self._handled, {}
        riders, self._with_acks = self._with_acks, []
        emitting, self._emitting = self._emitting, []
        if self._cluster and (emitting or riders):
            try:  # first what may sit on other nodes than the XACKs, whose order is not kept
                emitting = await self._before_acks(riders, emitting)
            except TRANSIENT as exc:
                self.log.warning(f"{self.event}.ack_failed", error=str(exc))
                self._requeue(acks, retried, handled, riders, emitting)
                return False
            riders = []  # sent
        commands, execs, recording = self._ack_commands(riders, emitting, acks, retried, handled)
        try:
            replies = await execute_many(self.redis, commands) if commands else []
        except TRANSIENT as exc:
            self.log.warning(f"{self.event}.ack_failed", error=str(exc))
            self._requeue(acks, retried, handled, riders, emitting)
            return False
        self._riders_done(riders, replies)
        done, in_flight = 0, self.in_flight
        for e, at in zip(emitting, execs, strict=True):
            self._emitted(e.stream, e.entry_id, len(e.emits), replies[at])
            if in_flight.pop((e.stream, e.entry_id), None) is not None:
                done += 1  # acked, or left pending for a retry: out of hand either way
        for stream, at in recording.items():
            self._recorded(stream, replies[at])
        for stream, ids in acks.items():
            for entry_id in ids:
                if in_flight.pop((stream, entry_id), None) is not None:
                    done += 1
        self._released(done)
        return True

    def _ack_commands(
        self,
        riders: list[tuple[Any, ...]],
        emitting: list[Emitting],
        acks: dict[str, list[str]],
        retried: dict[str, list[str]],
        handled: dict[str, list[str]],
    ) -> tuple[list[tuple[Any, ...]], list[int], dict[str, int]]:
        """The commands of one flush: the riders; each entry with emits in a MULTI/EXEC with
        them; each stream's XACK, after the commands that record its ids in the window if it
        records any; the error notes' HDELs. With where the EXEC reply of each of
        ``emitting`` is, and the ZADD reply of each stream whose XACK records ids.

        A record needs no transaction with its XACK: its ids are of handlers that returned,
        so a record whose XACK is lost (the connection cut between them) leaves an entry
        pending that its redelivery finds handled and acks, and a refused record (an
        out-of-memory Redis refuses the ZADD, not the XACK) leaves the entries acked and a
        repeat of them handled again."""
        commands = list(riders)
        execs: list[int] = []
        for e in emitting:
            records = self._records(e.stream, [e.handled] if e.handled is not None else [])
            xack: tuple[Any, ...] = ("XACK", self.keys.stream(e.stream), self.group, e.entry_id)
            commands += [("MULTI",), *e.emits, *records, xack]
            if e.retried:
                commands.append(("HDEL", self.keys.errors(e.stream), e.entry_id))
            execs.append(len(commands))
            commands.append(("EXEC",))
        recording: dict[str, int] = {}
        for stream, ids in acks.items():
            xack = ("XACK", self.keys.stream(stream), self.group, *ids)
            records = self._records(stream, handled.get(stream, []))
            if records:  # before the XACK, not in a MULTI: an id recorded is that of a handler done
                recording[stream] = len(commands)
                commands += records
            commands.append(xack)
        for stream, ids in retried.items():
            commands.append(("HDEL", self.keys.errors(stream), *ids))
        return commands, execs, recording

    def _records(self, stream: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The commands that record ``ids`` in the window of handled ids (none without one)."""
        window = self.window
        return window.record(stream, ids) if ids and window is not None and window.on(stream) else []

    def _recorded(self, stream: str, reply: Any) -> None:
        """The ZADD reply of the ids of ``stream`` an ack recorded: an error is logged (its
        entries are acked all the same, and a repeat of them is handled again)."""
        if isinstance(reply, ResponseError):
            self.log.error(
                f"{self.event}.window_failed",
                stream=stream,
                error=_described(reply),
                hint="the entries are acked without their ids recorded: a repeat may be handled",
            )

    def _requeue(
        self,
        acks: dict[str, list[str]],
        retried: dict[str, list[str]],
        handled: dict[str, list[str]],
        riders: list[tuple[Any, ...]],
        emitting: list[Emitting],
    ) -> None:
        """Put back what a failed flush took, for the next one."""
        for queued, taken in ((self._acks, acks), (self._retried, retried), (self._handled, handled)):
            for stream, ids in taken.items():
                queued.setdefault(stream, []).extend(ids)
        self._with_acks[:0] = riders
        self._emitting[:0] = emitting

    def _riders_done(self, riders: Sequence[tuple[Any, ...]], replies: Sequence[Any]) -> None:
        for command, reply in zip(riders, replies, strict=False):
            if isinstance(reply, ResponseError):
                self.log.error(f"{self.event}.after_ack_failed", command=str(command[0]), error=str(reply))

    async def _before_acks(self, riders: list[tuple[Any, ...]], emitting: list[Emitting]) -> list[Emitting]:
        """On a cluster the nodes of one round trip apply their commands in no set order, and a
        transaction keeps to one slot. So the commands riding with the acks, and an entry's
        envelopes to streams in other slots than its own, go first, in one round trip (each
        node its own); only an entry's same-slot envelopes go in the MULTI/EXEC with its XACK.
        An entry one of whose envelopes was refused is not acked (it is handled again, at
        least once); the others come back with their same-slot envelopes only, so a retry of
        the flush does not publish twice."""
        outside: list[tuple[int, tuple[Any, ...]]] = []
        kept: list[Emitting] = []
        for at, e in enumerate(emitting):
            home = slot_of(self._key.get(e.stream) or self.keys.stream(e.stream))
            inside = [c for c in e.emits if slot_of(c[1]) == home]
            outside += [(at, c) for c in e.emits if slot_of(c[1]) != home]
            kept.append(e._replace(emits=inside))
        if not outside and not riders:
            return emitting
        replies = await execute_many(self.redis, [*riders, *(c for _, c in outside)])
        self._riders_done(riders, replies)
        refused: dict[int, Any] = {}
        for (at, _), reply in zip(outside, replies[len(riders) :], strict=True):
            if isinstance(reply, ResponseError):
                refused.setdefault(at, reply)
        for at, reply in refused.items():
            stream, entry_id = emitting[at].stream, emitting[at].entry_id
            self.log.error(
                f"{self.event}.emit_failed",
                stream=stream,
                entry_id=entry_id,
                error=_described(reply),
                hint="not acked: the entry stays pending and is handled again",
            )
            if self.in_flight.pop((stream, entry_id), None) is not None:
                self._released(1)
        return [e for at, e in enumerate(kept) if at not in refused]

    def _emitted(self, stream: str, entry_id: str, count: int, reply: Any) -> None:
        """Log what of the MULTI/EXEC of an entry's envelopes and its XACK did not go
        through (a refused transaction leaves the entry pending: it is handled again)."""
        if not isinstance(reply, list):  # EXECABORT: a command was refused, nothing ran
            self.log.error(
                f"{self.event}.emit_failed",
                stream=stream,
                entry_id=entry_id,
                error=_described(reply),
                hint="nothing was published and the entry stays pending: it is handled again",
            )
            return
        failed = [_described(r) for r in reply[:count] if isinstance(r, ResponseError)]
        if failed:  # a runtime error (a key of the wrong type): the rest ran, the XACK too
            self.log.error(
                f"{self.event}.emit_failed",
                stream=stream,
                entry_id=entry_id,
                error=failed[0],
                failed=len(failed),
                emitted=count - len(failed),
            )

    def _released(self, n: int) -> None:  # noqa: B027 (an optional hook, no-op by default)
        """``n`` entries in hand were acked."""


def _described(reply: Any) -> str:
    """An error reply with its code (redis-py keeps the code apart from the message)."""
    if isinstance(reply, ResponseError):
        code = error_code(reply)
        text = str(reply)
        return text if text.startswith(code) else f"{code} {text}"
    return repr(reply)
