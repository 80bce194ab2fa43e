"""The per-entry delivery loop: read -> middleware chain -> handler -> ack.

A :class:`~bus.group.GroupConsumer` (the group, reading, own pending entries, acks)
that hands each entry to one of ``concurrency`` workers. At-least-once with
idempotent effects:

* COUNT never exceeds the free in-flight slots (``max_in_flight``);
* each entry goes through one chain of middlewares (``bus.middleware``): decode ->
  verify -> load payload -> authorize -> log context -> the consumer's own
  ``middlewares`` -> the handler. Undecodable / unknown-type / badly signed entries,
  and envelopes the ``authorize`` hook refuses (a signer that may not emit the type),
  are refused by their step: dead-lettered at once;
* an entry is acked only after its handler returned (acks, ``Delivery.with_ack``
  commands and ``Delivery.publish_with_ack`` envelopes go out in batches, one round
  trip each; an entry's envelopes and its XACK in one MULTI/EXEC);
* handlers are idempotent by default: the envelope ids of each read are looked up in
  the group's window of handled ids (``bus.dedupe``; one ZMSCORE per stream, before any
  is handled, by a task beside the read loop), and an entry whose id the group handled
  inside the window, or of which another entry is in hand, is acked unhandled
  (``log_context`` logs it at info as ``consumer.duplicate``); a handled entry's id goes
  into the window just before its XACK (``DeliveryPolicy.dedupe_window_s``; 0: no window);
* a failed entry stays pending and is retried with exponential backoff; its try count
  (``Delivery.attempt``) is the pending list's delivery count, and at the delivery cap
  it goes to the dead-letter stream (XADD + XACK in one MULTI);
* long handlers keep their lease and dead consumers' entries are reclaimed
  (``bus.maintenance``);
* ``stop()`` stops reading, drains in-flight work for ``drain_timeout_s`` and leaves the
  rest pending for the next owner.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup

from envelope import ENVELOPE_FIELD, SIGNATURE_FIELD, PacketEnvelope, Payload, PayloadRegistry, Verifier
from envelope import registry as default_registry

from . import tracing
from .connection import RedisClient, as_text
from .dedupe import HandledWindow, Repeat
from .errors import TRANSIENT, DeadLetter
from .group import Emitting, Fields, GroupConsumer
from .keys import Keys
from .middleware import (
    Authorizer,
    Middleware,
    authorize,
    check_step,
    compose,
    decode,
    delivery_log_context,
    load_payload,
    log_context,
    verify,
)
from .policy import DeliveryPolicy
from .publisher import Publisher

if TYPE_CHECKING:
    from .metrics import DeliveryMetrics

log = structlog.get_logger("l9.bus.consumer")
_ENV_KEY, _SIG_KEY = ENVELOPE_FIELD.encode(), SIGNATURE_FIELD.encode()

#: What a delivery holds until the chain's ``decode`` / ``load_payload`` steps ran.
UNDECODED = PacketEnvelope.model_construct(
    id="", source="agent://l9/undecoded", type="l9.bus.undecoded.v1", correlation_id="-"
)
UNTYPED = Payload()


@dataclass(slots=True)
class Delivery:
    """One entry handed to a handler. ``attempt`` is 1 on the first delivery, else the
    pending list's delivery count. ``envelope`` and ``payload`` are filled in by the
    middleware chain (``bus.middleware``): its first steps see placeholders. ``repeat``
    is set when the entry's envelope id was handled already (``bus.dedupe``): the chain
    acks it unhandled."""

    stream: str
    entry_id: str
    envelope: PacketEnvelope
    payload: Payload
    attempt: int
    raw: Fields = field(repr=False)
    #: Redis commands the consumer sends in the round trip that acknowledges this
    #: delivery, just before its XACK (see :meth:`with_ack`).
    after: list[tuple[Any, ...]] = field(default_factory=list, repr=False, compare=False)
    #: Envelopes to publish with the XACK, in one MULTI/EXEC (see :meth:`publish_with_ack`).
    emits: list[tuple[Any, ...]] = field(default_factory=list, repr=False, compare=False)
    repeat: Repeat | None = field(default=None, compare=False)
    #: What the lookup of its read's envelope ids in the group's window found, when there is
    #: a window ((stream, envelope id) -> when it was handled; ``StreamConsumer._hand``).
    looked: Mapping[tuple[str, str], float] | None = field(default=None, repr=False, compare=False)
    #: ``time.perf_counter()`` when it reached the handlers, while metered (``bus.metrics``).
    metered_at: float | None = field(default=None, repr=False, compare=False)

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

    def publish_with_ack(
        self, publisher: Publisher, envelopes: Sequence[PacketEnvelope], stream: str | None = None
    ) -> None:
        """Publish ``envelopes`` with this delivery's acknowledgement, once the handler has
        returned: their XADDs and the XACK go in one MULTI/EXEC, in the one round trip that
        acks (every delivery's emits and acks of the moment share it).

        Both or neither: a refused transaction (Redis out of memory, say) leaves the entry
        pending, and its retry emits again; a handler that fails publishes nothing. The
        envelopes are signed now; ``ctx.emit`` of an agent comes here.
        """
        self.emits.extend(publisher.commands(envelopes, stream))


Handler = Callable[[Delivery], Awaitable[None]]


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
        self._closing: set[Any] | None = None

    def put(self, items: Sequence[Delivery]) -> None:
        self._items.extend(items)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def close_after(self, pending: set[Any]) -> None:
        """Close once ``pending`` (reads on their way to the queue, the caller's set) is empty:
        the last one to arrive closes it (:meth:`arrived`)."""
        self._closing = pending
        if not pending:
            self.close()

    def arrived(self) -> None:
        """A read left ``pending`` (see :meth:`close_after`): put, or never to be."""
        if self._closing is not None and not self._closing:
            self.close()

    async def get(self) -> Delivery | None:
        """The next delivery, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            if self._wake.is_set():
                self._wake = anyio.Event()
            await self._wake.wait()
        return self._items.popleft()


class StreamConsumer(GroupConsumer):
    """Consumer ``consumer`` of ``group`` on ``streams``: each entry, decoded and checked by
    the middleware chain, to ``handler``; ``middlewares`` run last, around the handler.
    ``metrics`` (``bus.metrics``, for an admin port) goes first among them, and hears of
    failed attempts and dead letters."""

    event = "consumer"

    def __init__(
        self,
        redis: RedisClient,
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
        middlewares: Sequence[Middleware] = (),
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        if not streams:
            raise ValueError("a consumer needs at least one stream")
        super().__init__(
            redis,
            keys,
            group=group,
            consumer=consumer,
            streams=streams,
            policy=policy,
            scan_interval_s=None,
            log=log,
        )
        self.handler, self.verifier, self.types = handler, verifier, types
        self.authorize, self.metrics = authorize, metrics
        if metrics is not None:  # when the read loop went round (an admin port's /healthz)
            self.on_round = metrics.went_round
        if self.policy.dedupe_window_s > 0:
            self.window = HandledWindow(redis, keys, group, self.policy.dedupe_window_s, log=self.log)
        #: (stream, envelope id) -> the entry of it in hand that passed the checks first
        self._in_hand: dict[tuple[str, str], str] = {}
        #: The whole chain, the consumer's own steps first (see ``bus.middleware``).
        measured = [] if metrics is None else [check_step(metrics.reached)]
        self.middlewares: list[Middleware] = [*self._own_steps(), *measured, *middlewares]
        self._chain = compose(self.middlewares, handler)
        self._free = self.policy.max_in_flight
        self._freed = anyio.Event()
        self._queue = _WorkQueue()
        #: reads whose window lookup is in flight (they reach the queue once it answers)
        self._looking: set[object] = set()
        self._prepare = verifier.prepare if verifier is not None and verifier.checks_ed25519 else None
        #: where a read's window lookup runs (the workers' task group, set by ``_deliver``)
        self._tasks: TaskGroup
        #: The most one read takes: with a window, three quarters of the slots, so the workers
        #: have entries in hand while the next read's lookup is in flight.
        self._read_most = self.policy.max_in_flight
        if self.window is not None:
            self._read_most = max(1, self._read_most - self._read_most // 4)

    def _own_steps(self) -> list[Middleware]:
        steps: list[Middleware] = [decode]
        if self.verifier is not None:
            steps.append(verify(self.verifier))
        if tracing.tracer() is not None:  # on when the consumer is built: else no step at all
            steps.append(tracing.trace_step(self.group))  # once signed: no span in a forged trace
        steps.append(load_payload(self.types))
        if self.authorize is not None:
            steps.append(authorize(self.authorize))
        if self.window is not None:
            steps.append(check_step(self._repeat))
        steps.append(log_context(self.log))
        return steps

    def _repeat(self, d: Delivery) -> None:
        """Once ``d`` passed the checks: a repeat of an envelope the group handled inside the
        window (its read's lookup, done before the entry was queued: ``_look``), or of one another
        entry of which is in hand here, checked too (acked unhandled by ``log_context``); or
        else that envelope's entry in hand. Only checked entries count, so a forged entry
        that borrows a real envelope's id cannot have the real one dropped."""
        at = (d.stream, d.envelope.id)
        looked = d.looked
        if looked and (when := looked.get(at)) is not None:
            d.repeat = Repeat(handled_at=when)
            return
        first = self._in_hand.get(at)
        if first is not None and first != d.entry_id and (d.stream, first) in self.in_flight:
            d.repeat = Repeat(in_hand=first)
            return
        self._in_hand[at] = d.entry_id
        if len(self._in_hand) > 2 * self.policy.max_in_flight:  # forget those out of hand
            self._in_hand = {k: e for k, e in self._in_hand.items() if (k[0], e) in self.in_flight}

    async def ensure_groups(self) -> None:
        for stream in self.streams:
            await self._create_group(stream, mkstream=True)

    async def _deliver(self) -> None:
        async with anyio.create_task_group() as workers:
            self._tasks = workers
            for _ in range(self.policy.concurrency):
                workers.start_soon(self._worker)
            try:
                await self._read_loop()
            finally:
                self._queue.close_after(self._looking)
            # No more reads: the workers finish what is queued (and what the lookups still in
            # flight hand over), within the drain timeout.
            workers.cancel_scope.deadline = anyio.current_time() + self.policy.drain_timeout_s

    # -- taking entries into hand --------------------------------------------------------------
    async def _wait_for_room(self) -> None:
        while self._free <= 0:
            self._freed = anyio.Event()
            await self._freed.wait()

    def _released(self, n: int) -> None:
        self._free += n
        self._freed.set()

    def _lost(self) -> None:
        self._released(self.policy.max_in_flight - self._free)
        self._in_hand.clear()

    def _hand(self, read: list[Delivery]) -> None:
        """Take ``read`` into hand. With a window, its envelope ids (their headers': ``decode``
        checks them) are looked up in it (``bus.dedupe``) by a task of their own, which then
        hands the entries to the workers (``_repeat`` reads what it found): the read loop goes
        on to its next read while the lookup is in flight."""
        if self._prepare is not None:  # Ed25519 batches: their trees, from the entries read together
            self._prepare([(d.raw.get(_ENV_KEY), d.raw.get(_SIG_KEY)) for d in read])
        self._take_in(read)
        window = self.window
        if window is not None:
            ids: dict[str, list[bytes | str]] = {}
            if len(self.streams) == 1:
                one = [eid for d in read if (eid := _header_id(d.raw)) is not None]
                if one:
                    ids[read[0].stream] = one
            else:
                for d in read:
                    if (eid := _header_id(d.raw)) is not None:
                        ids.setdefault(d.stream, []).append(eid)
            if ids:
                token = object()
                self._looking.add(token)
                self._tasks.start_soon(self._look, window, ids, read, token)
                return
        self._queue.put(read)

    def _take_in(self, read: list[Delivery]) -> None:
        """``read`` is in hand: in flight, its slots taken."""
        now, in_flight = time.monotonic(), self.in_flight
        for d in read:
            in_flight[(d.stream, d.entry_id)] = now
        self._free -= len(read)

    async def _look(
        self, window: HandledWindow, ids: dict[str, list[bytes | str]], read: list[Delivery], token: object
    ) -> None:
        """The lookup of ``read``'s envelope ids, then ``read`` to the workers, however the lookup
        ends (one cut short finds nothing: the entries are handled, at least once)."""
        found: dict[tuple[str, str], float] = {}
        try:
            found = await window.lookup(ids)
        finally:
            if found:
                for d in read:
                    d.looked = found
            self._queue.put(read)
            self._looking.discard(token)
            self._queue.arrived()

    async def _read_new(self) -> None:
        reply = await self._xreadgroup(min(self._free, self._read_most) // len(self.streams))
        if not reply:
            return
        names = self._names
        self._hand(
            [
                Delivery(
                    names[key], raw_id.decode() if type(raw_id) is bytes else raw_id, UNDECODED, UNTYPED, 1, f
                )
                for key, entries in reply
                for raw_id, f in entries
            ]
        )
        # Let the woken workers start on what was just queued before this loop spends
        # its turn issuing the next read: a handler's first step is on the latency path.
        await anyio.lowlevel.checkpoint()

    async def _pending_room(self) -> int:
        await self._wait_for_room()
        return self._free

    async def _take(self, stream: str, rows: Sequence[Mapping[str, Any]]) -> None:
        claimed = await self._claim(stream, rows, count_now=True)
        if claimed:
            self._hand([Delivery(stream, e, UNDECODED, UNTYPED, n, f) for e, f, n in claimed])
            await anyio.lowlevel.checkpoint()

    async def _scan_pending(self) -> None:
        """Failed (or reclaimed) entries whose backoff has passed."""
        policy = self.policy
        for stream in self.streams:
            rows = await self._own_pending(stream, "-", 100, idle=policy.retry_backoff_ms)
            due = [
                r
                for r in rows
                if (stream, as_text(r["message_id"])) not in self.in_flight
                and r["time_since_delivered"] >= policy.backoff_ms(r["times_delivered"])
            ]
            await self._take(stream, due[: max(0, self._free)])

    # -- handling -----------------------------------------------------------------------------------
    async def _worker(self) -> None:
        while (delivery := await self._queue.get()) is not None:
            await self._process(delivery)

    async def _process(self, d: Delivery) -> None:
        try:
            await self._chain(d)
        except DeadLetter as exc:
            await self._refuse(d, exc)
            return
        except Exception as exc:
            await self._failed(d, exc)
            return
        if self.metrics is not None:
            self.metrics.returned(d)
        handled = self._handled_id(d)
        if d.emits:  # acked in the MULTI/EXEC of its envelopes (its error note goes there too)
            self._emitting.append(Emitting(d.stream, d.entry_id, d.emits, d.attempt > 1, handled))
        else:
            self._acks.setdefault(d.stream, []).append(d.entry_id)
            if handled is not None:
                self._handled.setdefault(d.stream, []).append(handled)
            if d.attempt > 1:
                self._retried.setdefault(d.stream, []).append(d.entry_id)
        if d.after:
            self._with_acks += d.after
        self._ack_wanted.set()

    def _handled_id(self, d: Delivery) -> str | None:
        """The envelope id its ack records in the window: that of an entry the chain went
        through (not a repeat), when there is a window (``GroupConsumer._records`` leaves out
        a stream whose window is off)."""
        return d.envelope.id or None if self.window is not None and d.repeat is None else None

    def _context(self, d: Delivery) -> Any:
        return delivery_log_context(d) if d.envelope is not UNDECODED else nullcontext()

    async def _refuse(self, d: Delivery, refusal: DeadLetter) -> None:
        """A step (or the handler) refused the entry: dead-letter it now."""
        with self._context(d), anyio.CancelScope(shield=True):
            try:
                await self.dead.letter(d.stream, d.entry_id, d.raw, refusal.reason, refusal.detail, d.attempt)
                if self.metrics is not None:
                    self.metrics.dead_lettered(d, refusal.reason)
                if d.envelope is not UNDECODED:
                    tracing.dead_lettered(d, self.group, refusal.reason, refusal.detail)
            except TRANSIENT as err:  # still pending: refused again when retried
                self.log.warning("consumer.redis_unavailable", error=str(err))
        self._settled(d)

    async def _failed(self, d: Delivery, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.metrics is not None:
            self.metrics.failed(d)
        with self._context(d):
            cap = self.policy.max_deliveries
            self.log.warning("consumer.handler_failed", error=error, max_deliveries=cap)
            with anyio.CancelScope(shield=True):
                try:
                    if d.attempt >= cap:
                        await self.dead.letter(
                            d.stream,
                            d.entry_id,
                            d.raw,
                            "delivery_cap",
                            f"failed {d.attempt} time(s); last error: {error}",
                            d.attempt,
                        )
                        if self.metrics is not None:
                            self.metrics.dead_lettered(d, "delivery_cap")
                        if d.envelope is not UNDECODED:
                            tracing.dead_lettered(d, self.group, "delivery_cap", error)
                    else:
                        await self.dead.note_error(d.stream, d.entry_id, error)
                except TRANSIENT as err:
                    self.log.warning("consumer.redis_unavailable", error=str(err))
        self._settled(d)

    def _settled(self, d: Delivery) -> None:
        """``d`` is out of hand without an ack of ours (dead-lettered, or left to a retry)."""
        if self.in_flight.pop((d.stream, d.entry_id), None) is not None:
            self._released(1)


def _header_id(fields: Fields) -> bytes | str | None:
    """The envelope id among an entry's plain header fields (checked against the envelope
    by ``decode``), as Redis returned it; None if it has none."""
    eid = fields.get(b"id")
    if eid is None:
        eid = fields.get("id")  # type: ignore[call-overload]  # a client with decode_responses
    return eid
