"""The delivery loop of one consumer in one group: read -> dispatch -> ack.

At-least-once with idempotent effects:

* at start the consumer first drains its own pending entries, then reads ``>``;
* COUNT never exceeds the free in-flight slots; ``concurrency`` handlers run;
* an entry is acked only after its handler returned;
* a failed entry stays pending and is retried with exponential backoff; at
  the delivery cap it goes to the dead-letter stream (XADD + XACK in one
  MULTI); undecodable / unknown-type / badly signed entries go there at once, and
  so do envelopes the ``authorize`` hook refuses (a signer that may not emit the type);
* long handlers keep their lease (see ``bus.maintenance``), dead consumers'
  entries are reclaimed there too;
* a missing group (Redis restarted or flushed) is recreated with backoff;
* ``stop()`` stops reading, drains in-flight work for ``drain_timeout_s`` and
  leaves the rest pending for the next owner.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from envelope import EnvelopeError, PacketEnvelope, Payload, PayloadRegistry, Verifier, decode
from envelope import registry as default_registry

from .connection import execute_many
from .deadletter import DeadLetters
from .errors import TRANSIENT
from .keys import Keys
from .maintenance import Maintenance
from .policy import DeliveryPolicy

Fields = Mapping[bytes, bytes]
log = structlog.get_logger("l9.bus.consumer")


def _log_vars() -> tuple[contextvars.ContextVar[Any], ...]:
    """structlog's context variables for the per-delivery log context.

    Setting and resetting them directly costs ~1.2 us per delivery;
    ``bound_contextvars`` copies and scans the whole context twice (~6 us).
    """
    tokens = structlog.contextvars.bind_contextvars(
        envelope_id=None, correlation_id=None, type=None, stream=None, attempt=None
    )
    structlog.contextvars.reset_contextvars(**tokens)
    return tuple(t.var for t in tokens.values())


_LOG_VARS = _log_vars()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One entry handed to a handler. ``attempt`` is 1 on the first delivery."""

    stream: str
    entry_id: str
    envelope: PacketEnvelope
    payload: Payload
    attempt: int
    raw: Fields = field(repr=False)
    #: Redis commands the consumer sends in the round trip that acknowledges this
    #: delivery, just before its XACK (see :meth:`with_ack`).
    after: list[tuple[Any, ...]] = field(default_factory=list, repr=False, compare=False)

    def with_ack(self, *commands: tuple[Any, ...]) -> None:
        """Send ``commands`` (e.g. ``("XADD", key, "*", ...)``) with this delivery's
        acknowledgement, once the handler has returned: one round trip for both.

        For effects that follow the handler's answer (telemetry, copies): they are
        written before the XACK, so a crash in between leaves the entry pending and the
        handler runs again (at least once, never lost); an error *reply* to one of them
        is logged (``consumer.after_ack_failed``) and does not hold the ack back.
        A handler that fails drops them.
        """
        self.after.extend(commands)


Handler = Callable[[Delivery], Awaitable[None]]
#: Called on every verified envelope before any handler sees it; raises EnvelopeError
#: (e.g. ``unauthorized_signer``) to dead-letter it. See ``governance.SignerACL.authorize``.
Authorizer = Callable[[PacketEnvelope], None]


class _WorkQueue:
    """FIFO from the reader to the workers.

    Unlike an anyio memory object stream it does not checkpoint on every put
    and get (two event-loop iterations per entry); a waiting worker is woken
    once per batch. Bounded by ``max_in_flight`` through ``_free``.
    """

    def __init__(self) -> None:
        self._items: deque[Delivery] = deque()
        self._wake = anyio.Event()
        self._closed = False

    def put(self, item: Delivery) -> None:
        self._items.append(item)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def get(self) -> Delivery | None:
        """The next delivery, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            if self._wake.is_set():
                self._wake = anyio.Event()
            await self._wake.wait()
        return self._items.popleft()


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


class StreamConsumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        group: str,
        consumer: str,
        streams: Sequence[str],
        handler: Handler,
        verifier: Verifier | None,
        types: PayloadRegistry = default_registry,
        policy: DeliveryPolicy | None = None,
        authorize: Authorizer | None = None,
    ) -> None:
        if not streams:
            raise ValueError("a consumer needs at least one stream")
        self.redis, self.keys, self.group, self.consumer = redis, keys, group, consumer
        self.streams = list(dict.fromkeys(streams))
        self.handler, self.verifier, self.types = handler, verifier, types
        self.authorize = authorize
        self.policy = policy or DeliveryPolicy()
        self._key = {name: keys.stream(name) for name in self.streams}
        self.in_flight: dict[tuple[str, str], float] = {}  # (stream, id) -> last lease time
        self._free = self.policy.max_in_flight
        self._freed = anyio.Event()
        self._acks: dict[str, list[tuple[str, int]]] = {}
        self._with_acks: list[tuple[Any, ...]] = []  # Delivery.with_ack commands, sent before the XACKs
        self._ack_wanted = anyio.Event()
        self._read_scope = anyio.CancelScope()
        self._stopping = False
        self._started = anyio.Event()
        self.dead = DeadLetters(redis, keys, group, consumer)
        self.maintenance = Maintenance(self)
        self.log = log.bind(group=group, consumer=consumer)

    # -- lifecycle ---------------------------------------------------------------
    async def run(self) -> None:
        """Consume until ``stop()``; then drain and return."""
        await self.ensure_groups()
        async with anyio.create_task_group() as side:
            side.start_soon(self._ack_loop)
            side.start_soon(self.maintenance.run)
            self._started.set()
            self.log.info("consumer.started", streams=self.streams)
            await self._consume()
            with anyio.CancelScope(shield=True):
                await self._flush_acks()
                await self.maintenance.release()
            side.cancel_scope.cancel()
        self.log.info("consumer.stopped", left_pending=len(self.in_flight))

    def stop(self) -> None:
        """Stop reading; in-flight work drains (see ``DeliveryPolicy.drain_timeout_s``)."""
        self._stopping = True
        self._read_scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def wait_started(self) -> None:
        await self._started.wait()

    async def ensure_groups(self) -> None:
        for key in self._key.values():
            try:
                await self.redis.xgroup_create(key, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _consume(self) -> None:
        send = _WorkQueue()
        async with anyio.create_task_group() as workers:
            for _ in range(self.policy.concurrency):
                workers.start_soon(self._worker, send)
            try:
                with self._read_scope:
                    await self._read_loop(send)
            finally:
                send.close()
            # No more reads: the workers finish what is queued, within the drain timeout.
            workers.cancel_scope.deadline = anyio.current_time() + self.policy.drain_timeout_s

    # -- reading -------------------------------------------------------------------
    async def _read_loop(self, send: _WorkQueue) -> None:
        """Own pending entries first, then new ones; Redis trouble means backoff, never a crash."""
        backoff, drained = Backoff(), False
        next_scan = time.monotonic() + self.policy.scan_interval_s
        while not self._stopping:
            await self._wait_for_capacity()
            try:
                if not drained:
                    await self._drain_own_pending(send)
                    drained = True
                if time.monotonic() >= next_scan:
                    await self._scan_pending(send)
                    next_scan = time.monotonic() + self.policy.scan_interval_s
                await self._read_new(send)
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._recover_group(exc, backoff)
            except TRANSIENT as exc:
                self.log.warning("consumer.redis_unavailable", error=str(exc), retry_in_s=backoff.next)
                await backoff.sleep()

    async def _read_new(self, send: _WorkQueue) -> None:
        block = max(1, min(self.policy.block_ms, int(self.policy.scan_interval_s * 1000)))
        reply = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            dict.fromkeys(self._key.values(), ">"),
            count=max(1, self._free // len(self.streams)),
            block=block,
        )
        await self._accept_reply(send, reply, attempt=1)

    async def _recover_group(self, exc: Exception, backoff: Backoff) -> None:
        self.log.error(
            "consumer.group_missing",
            error=str(exc),
            hint="Redis restarted or was flushed; recreating the consumer group",
            retry_in_s=backoff.next,
        )
        self.in_flight.clear()  # those entries no longer exist
        self._release(self.policy.max_in_flight - self._free)
        try:
            await self.ensure_groups()
        except TRANSIENT as err:
            self.log.warning("consumer.redis_unavailable", error=str(err))
        await backoff.sleep()

    async def _accept_reply(self, send: _WorkQueue, reply: Any, attempt: int | dict[str, int]) -> None:
        if not reply:
            return
        for key, entries in reply:
            stream = self.keys.name_of(key.decode() if isinstance(key, bytes) else key)
            for raw_id, fields in entries:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                n = attempt if isinstance(attempt, int) else attempt[entry_id]
                await self._accept(send, stream, entry_id, fields, n)
        # Let the woken workers start on what was just queued before this loop spends
        # its turn issuing the next read: a handler's first step is on the latency path.
        await anyio.lowlevel.checkpoint()

    async def _accept(
        self,
        send: _WorkQueue,
        stream: str,
        entry_id: str,
        fields: Fields | None,
        attempt: int,
    ) -> None:
        if fields is None:  # deleted while pending: nothing left to do
            await self.redis.xack(self._key[stream], self.group, entry_id)
            return
        try:
            envelope, payload = decode(fields, self.verifier, self.types)
            if self.authorize is not None:
                self.authorize(envelope)
        except EnvelopeError as exc:
            await self.dead.letter(stream, entry_id, fields, exc.reason.value, exc.detail, attempt)
            return
        self._free -= 1
        self.in_flight[(stream, entry_id)] = time.monotonic()
        send.put(Delivery(stream, entry_id, envelope, payload, attempt, fields))

    async def _wait_for_capacity(self) -> None:
        while self._free <= 0:
            self._freed = anyio.Event()
            await self._freed.wait()

    def _release(self, n: int) -> None:
        self._free += n
        self._freed.set()

    # -- own pending: start-up drain and retries -----------------------------------
    async def _drain_own_pending(self, send: _WorkQueue) -> None:
        """Entries this consumer name held before a restart, oldest first."""
        for stream, key in self._key.items():
            cursor = "-"
            while not self._stopping:
                await self._wait_for_capacity()
                rows = await self._own_pending(key, cursor, self._free, idle=None)
                if not rows:
                    break
                cursor = "(" + rows[-1]["message_id"].decode()
                await self._retry(send, stream, rows)

    async def _scan_pending(self, send: _WorkQueue) -> None:
        """Failed (or reclaimed) entries whose backoff has passed."""
        for stream, key in self._key.items():
            rows = await self._own_pending(key, "-", 100, idle=self.policy.retry_backoff_ms)
            due = [
                r
                for r in rows
                if (stream, r["message_id"].decode()) not in self.in_flight
                and r["time_since_delivered"] >= self.policy.backoff_ms(r["times_delivered"])
            ]
            await self._retry(send, stream, due[: max(0, self._free)])

    async def _own_pending(self, key: str, start: str, count: int, idle: int | None) -> Any:
        return await self.redis.xpending_range(
            key,
            self.group,
            min=start,
            max="+",
            count=max(1, count),
            consumername=self.consumer,
            idle=idle,
        )

    async def _retry(self, send: _WorkQueue, stream: str, rows: list[dict[str, Any]]) -> None:
        key, cap = self._key[stream], self.policy.max_deliveries
        todo: dict[str, int] = {}
        for row in rows:
            entry_id = row["message_id"].decode()
            if (stream, entry_id) in self.in_flight:
                continue
            if row["times_delivered"] >= cap:
                await self.dead.over_cap(stream, key, entry_id, row["times_delivered"])
            else:
                todo[entry_id] = row["times_delivered"] + 1
        if not todo:
            return
        claimed = await self.redis.xclaim(key, self.group, self.consumer, 0, list(todo))
        await self._accept_reply(send, [(key, claimed)], attempt=todo)

    # -- handling and acking ---------------------------------------------------------
    async def _worker(self, queue: _WorkQueue) -> None:
        while (delivery := await queue.get()) is not None:
            await self._process(delivery)

    async def _process(self, d: Delivery) -> None:
        env = d.envelope
        v_id, v_corr, v_type, v_stream, v_attempt = _LOG_VARS
        tokens = (
            v_id.set(env.id),
            v_corr.set(env.correlation_id),
            v_type.set(env.type),
            v_stream.set(d.stream),
            v_attempt.set(d.attempt),
        )
        try:
            if d.envelope.expired():
                self.log.warning(
                    "consumer.expired",
                    expires_at=d.envelope.expires_at.isoformat() if d.envelope.expires_at else None,
                )
            else:
                try:
                    await self.handler(d)
                except Exception as exc:
                    await self._failed(d, exc)
                    return
            self._acks.setdefault(d.stream, []).append((d.entry_id, d.attempt))
            if d.after:
                self._with_acks += d.after
            self._ack_wanted.set()
        finally:
            for var, token in zip(_LOG_VARS, tokens, strict=True):
                var.reset(token)

    async def _failed(self, d: Delivery, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.log.warning("consumer.handler_failed", error=error, max_deliveries=self.policy.max_deliveries)
        with anyio.CancelScope(shield=True):
            try:
                if d.attempt >= self.policy.max_deliveries:
                    await self.dead.letter(
                        d.stream,
                        d.entry_id,
                        d.raw,
                        "delivery_cap",
                        f"failed {d.attempt} time(s); last error: {error}",
                        d.attempt,
                    )
                else:
                    await self.dead.note_error(d.stream, d.entry_id, error)
            except TRANSIENT as err:
                self.log.warning("consumer.redis_unavailable", error=str(err))
        if self.in_flight.pop((d.stream, d.entry_id), None) is not None:
            self._release(1)

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
        """XACK everything handled so far, after its ``with_ack`` commands, in one round
        trip; False if Redis failed (everything stays queued for the next try)."""
        if not self._acks:
            return True
        batch, self._acks = self._acks, {}
        riders, self._with_acks = self._with_acks, []
        commands = list(riders)
        for stream, items in batch.items():
            commands.append(("XACK", self._key[stream], self.group, *(i for i, _ in items)))
            retried = [i for i, attempt in items if attempt > 1]
            if retried:
                commands.append(("HDEL", self.keys.errors(stream), *retried))
        try:
            replies = await execute_many(self.redis, commands)
        except TRANSIENT as exc:
            self.log.warning("consumer.ack_failed", error=str(exc))
            for stream, items in batch.items():
                self._acks.setdefault(stream, []).extend(items)
            self._with_acks[:0] = riders
            return False
        for command, reply in zip(riders, replies, strict=False):
            if isinstance(reply, ResponseError):
                self.log.error("consumer.after_ack_failed", command=str(command[0]), error=str(reply))
        done = 0
        for stream, items in batch.items():
            for entry_id, _ in items:
                if self.in_flight.pop((stream, entry_id), None) is not None:
                    done += 1
        self._release(done)
        return True
