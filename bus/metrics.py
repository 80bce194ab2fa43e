"""The bus's Prometheus metrics, in prometheus-client's default registry.

Per delivery (labels ``stream``, ``group``, ``type``; ``type`` is ``-`` for an entry that
could not be decoded or whose type this process does not know: a label value per unknown
type would let any writer of a stream grow the metrics without bound)::

    l9_envelopes_received_total         deliveries that reached the agent's handler chain
    l9_envelopes_handled_total          ... whose handler returned (acked once the ack flush runs)
    l9_envelopes_failed_total           failed attempts (retried with backoff, or dead at the cap)
    l9_envelopes_retried_total          deliveries after the first (attempt > 1)
    l9_envelopes_dead_lettered_total    dead-lettered here (label ``reason`` too)
    l9_handler_duration_seconds         the handler chain's time (histogram)
    l9_envelopes_in_flight              entries in hand: read and not acked yet (label ``group``)

Per stream of the namespace, from ``XINFO GROUPS`` and ``XLEN``, exported by one process
(the auditor, :class:`GroupStats`)::

    l9_group_lag                        entries not yet delivered to the group
    l9_group_pending                    entries delivered to the group and not acked
    l9_stream_dead_letters              entries in the stream's dead-letter stream

:class:`DeliveryMetrics` is the per-entry loop's (``StreamConsumer(metrics=...)``): a middleware
at the head of the consumer's own ``middlewares`` (it sees what reaches the handlers, their
outcome and their time) and two hooks the loop calls where the chain cannot see (a failed
attempt, a dead letter). :class:`BatchMetrics` is the batch loop's, around its stream source
and handler. Both keep when their loop last went round, for an admin port's ``/healthz``.
Label children are looked up once per (stream, type) and kept; without an admin port none
of this is built, and the loops pay one attribute check.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from envelope import PayloadRegistry
from envelope import registry as default_registry

from .batch import BatchHandler, Entry, Rejected, Staged, StreamSource
from .connection import RedisClient, as_text, execute_many
from .index import known_streams
from .keys import Keys

if TYPE_CHECKING:
    from .consumer import Delivery, Handler

log = structlog.get_logger("l9.bus.metrics")

_PER_TYPE = ("stream", "group", "type")
RECEIVED = Counter("l9_envelopes_received", "Deliveries that reached the handler chain.", _PER_TYPE)
HANDLED = Counter("l9_envelopes_handled", "Deliveries whose handler returned.", _PER_TYPE)
FAILED = Counter("l9_envelopes_failed", "Failed attempts (retried, or dead-lettered at the cap).", _PER_TYPE)
RETRIED = Counter("l9_envelopes_retried", "Deliveries after the first (attempt > 1).", _PER_TYPE)
DEAD_LETTERED = Counter(
    "l9_envelopes_dead_lettered", "Entries dead-lettered by this process.", (*_PER_TYPE, "reason")
)
HANDLER_SECONDS = Histogram(
    "l9_handler_duration_seconds",
    "Time in the handler chain, per delivery.",
    _PER_TYPE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
IN_FLIGHT = Gauge("l9_envelopes_in_flight", "Entries in hand: read and not acked yet.", ("group",))
#: The label of an undecodable entry or an unknown type.
UNKNOWN = "-"
#: Distinct types a batch loop labels (it reads raw entries of every type); past it: ``-``.
BATCH_TYPES = 256
#: Seconds between two refreshes of :class:`GroupStats`.
GROUP_STATS_INTERVAL_S = 5.0


def watch_in_flight(group: str, in_flight: Sized) -> None:
    """``l9_envelopes_in_flight{group}`` reads ``len(in_flight)`` at each scrape (a loop's
    ``in_flight``): nothing is counted per entry."""
    IN_FLIGHT.labels(group).set_function(lambda: len(in_flight))


class _Outcomes(NamedTuple):
    """The label children of one (stream, group, type)."""

    received: Any
    handled: Any
    failed: Any
    retried: Any
    seconds: Any


def _outcomes(stream: str, group: str, type_: str) -> _Outcomes:
    labels = (stream, group, type_)
    return _Outcomes(
        RECEIVED.labels(*labels),
        HANDLED.labels(*labels),
        FAILED.labels(*labels),
        RETRIED.labels(*labels),
        HANDLER_SECONDS.labels(*labels),
    )


class _LoopMetrics:
    """What both loops' metrics keep: the label children met so far, and the last round."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._children: dict[tuple[str, str], _Outcomes] = {}
        #: ``time.monotonic()`` when the loop last went round; None before its first round.
        self.last_round: float | None = None

    def went_round(self) -> None:
        self.last_round = time.monotonic()

    def _of(self, stream: str, type_: str) -> _Outcomes:
        children = self._children.get((stream, type_))
        if children is None:
            children = self._children[(stream, type_)] = _outcomes(stream, self.group, type_)
        return children


class DeliveryMetrics(_LoopMetrics):
    """The metrics of one ``StreamConsumer`` (group ``group``; ``types``: the consumer's): its
    middleware and its hooks (the read loop calls :meth:`went_round` at the top of each round)."""

    def __init__(self, group: str, types: PayloadRegistry = default_registry) -> None:
        super().__init__(group)
        self.types = types
        self._dead: dict[tuple[str, str, str], Any] = {}

    def _type(self, d: Delivery) -> str:
        type_ = d.envelope.type
        return type_ if type_ in self.types else UNKNOWN

    async def __call__(self, d: Delivery, call_next: Handler) -> None:
        """The middleware: the delivery reached the handlers (its type is known: the chain's
        checks loaded its payload); its time, and whether the handler returned."""
        children = self._of(d.stream, d.envelope.type)
        children.received.inc()
        if d.attempt > 1:
            children.retried.inc()
        started = time.perf_counter()
        try:
            await call_next(d)
        finally:
            children.seconds.observe(time.perf_counter() - started)
        children.handled.inc()

    def failed(self, d: Delivery) -> None:
        """Hook: an attempt failed (``StreamConsumer._failed``)."""
        self._of(d.stream, self._type(d)).failed.inc()

    def dead_lettered(self, d: Delivery, reason: str) -> None:
        """Hook: ``d`` went to the dead-letter stream for ``reason``."""
        key = (d.stream, self._type(d), reason)
        child = self._dead.get(key)
        if child is None:
            child = self._dead[key] = DEAD_LETTERED.labels(d.stream, self.group, key[1], reason)
        child.inc()


class BatchMetrics(_LoopMetrics):
    """The metrics of one ``BatchConsumer`` (group ``group``): build it with the source and the
    handler it wraps (:meth:`source`, :meth:`handler`), which also tell when the loop went round.

    Counted per batch try: received, retried and, when the handler returns, handled (what it did
    not refuse) and dead-lettered (what it refused, by reason); when it raises, a failed attempt
    of each entry (a transient failure too: it is tried again in place). The type is the entry's
    ``type`` header, the first :data:`BATCH_TYPES` distinct ones.
    """

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self._types: set[str] = set()

    def source(self, inner: StreamSource) -> StreamSource:
        """The loop's stream source, looked up again on every round that is due (``discover``)."""

        async def streams() -> Iterable[str]:
            self.went_round()
            return await inner()

        return streams

    def handler(self, inner: BatchHandler | Staged[Any]) -> BatchHandler | Staged[Any]:
        """``inner``, counted; a :class:`Staged` one stays staged (its ``prepare`` as it was)."""
        if isinstance(inner, Staged):
            commit = inner.commit

            async def staged(batch: Sequence[Entry], prepared: Any) -> Sequence[Rejected]:
                return await self._counted(batch, lambda: commit(batch, prepared))

            return Staged(inner.prepare, staged)
        plain = inner

        async def handle(batch: Sequence[Entry]) -> Sequence[Rejected]:
            return await self._counted(batch, lambda: plain(batch))

        return handle

    async def _counted(
        self, batch: Sequence[Entry], run: Callable[[], Awaitable[Sequence[Rejected]]]
    ) -> Sequence[Rejected]:
        self.went_round()
        tally = Tally((e.stream, self._type(e)) for e in batch)
        retried = Tally((e.stream, self._type(e)) for e in batch if e.attempt > 1)
        for key, n in tally.items():
            self._of(*key).received.inc(n)
        for key, n in retried.items():
            self._of(*key).retried.inc(n)
        try:
            rejected = await run()
        except Exception:
            for key, n in tally.items():
                self._of(*key).failed.inc(n)
            raise
        finally:
            self.went_round()
        for r in rejected:
            key = (r.entry.stream, self._type(r.entry))
            tally[key] -= 1
            DEAD_LETTERED.labels(key[0], self.group, key[1], r.reason).inc()
        for key, n in tally.items():
            if n:
                self._of(*key).handled.inc(n)
        return rejected

    def _type(self, entry: Entry) -> str:
        raw = entry.fields.get(b"type")
        type_ = as_text(raw) if raw is not None else UNKNOWN
        if type_ in self._types:
            return type_
        if len(self._types) >= BATCH_TYPES:
            return UNKNOWN
        self._types.add(type_)
        return type_


class GroupStats(Collector):
    """``l9_group_lag``, ``l9_group_pending`` and ``l9_stream_dead_letters`` of the streams of
    ``partitions`` (all: None) as the streams index lists them, as of the last :meth:`refresh`.

    Registered in the default registry while :meth:`run` runs. One process of a deployment
    runs it (the auditor: one per partition share), so each series has one source."""

    def __init__(self, redis: RedisClient, keys: Keys, partitions: Iterable[int] | None = None) -> None:
        self.redis, self.keys = redis, keys
        self.partitions = None if partitions is None else list(partitions)
        #: (stream, group) -> (lag or None, pending); stream -> dead letters
        self.groups: dict[tuple[str, str], tuple[int | None, int]] = {}
        self.dead: dict[str, int] = {}

    async def refresh(self) -> None:
        """Read the streams index, then every stream's groups and dead-letter count (one round
        trip for all of them)."""
        names = sorted(await known_streams(self.redis, self.keys, self.partitions))
        commands: list[tuple[Any, ...]] = [("XINFO", "GROUPS", self.keys.stream(n)) for n in names]
        commands += [("XLEN", self.keys.dead(n)) for n in names]
        replies = await execute_many(self.redis, commands) if commands else []
        groups: dict[tuple[str, str], tuple[int | None, int]] = {}
        for name, reply in zip(names, replies, strict=False):
            if isinstance(reply, list):  # else an error reply: the stream is gone (deleted)
                for row in reply:
                    info = _fields(row)
                    lag = info.get("lag")
                    groups[(name, as_text(info["name"]))] = (
                        None if lag is None else int(lag),
                        int(info["pending"]),
                    )
        dead = {n: int(r) for n, r in zip(names, replies[len(names) :], strict=True) if isinstance(r, int)}
        self.groups, self.dead = groups, dead

    async def run(self, interval_s: float = GROUP_STATS_INTERVAL_S) -> None:
        """Refresh every ``interval_s`` until cancelled; Redis trouble empties the figures
        (no series rather than stale ones) and is logged."""
        REGISTRY.register(self)
        try:
            while True:
                try:
                    await self.refresh()
                except Exception as exc:
                    log.warning("metrics.group_stats_failed", error=f"{type(exc).__name__}: {exc}")
                    self.groups, self.dead = {}, {}
                await anyio.sleep(interval_s)
        finally:
            REGISTRY.unregister(self)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        groups, dead = self.groups, self.dead
        lag = GaugeMetricFamily(
            "l9_group_lag",
            "Entries of the stream not yet delivered to the group.",
            labels=("stream", "group"),
        )
        pending = GaugeMetricFamily(
            "l9_group_pending", "Entries delivered to the group and not acked.", labels=("stream", "group")
        )
        for (stream, group), (behind, held) in groups.items():
            if behind is not None:  # Redis cannot tell (entries deleted inside the group's range)
                lag.add_metric((stream, group), behind)
            pending.add_metric((stream, group), held)
        letters = GaugeMetricFamily(
            "l9_stream_dead_letters", "Entries in the stream's dead-letter stream.", labels=("stream",)
        )
        for stream, n in dead.items():
            letters.add_metric((stream,), n)
        yield from (lag, pending, letters)


async def missing_groups(redis: RedisClient, keys: Keys, group: str, streams: Sequence[str]) -> list[str]:
    """Those of ``streams`` on which ``group`` does not exist (nor the stream), in one round trip:
    what an admin port's ``/readyz`` asks of a consumer."""
    if not streams:
        return []
    replies = await execute_many(redis, [("XINFO", "GROUPS", keys.stream(n)) for n in streams])
    return [
        name
        for name, reply in zip(streams, replies, strict=True)
        if not isinstance(reply, list) or all(as_text(_fields(row)["name"]) != group for row in reply)
    ]


def _fields(row: Any) -> Mapping[str, Any]:
    """An XINFO GROUPS row as a map: RESP2 gives a flat list of names and values."""
    if isinstance(row, dict):
        return {as_text(k): v for k, v in row.items()}
    return {as_text(k): v for k, v in zip(row[::2], row[1::2], strict=True)}
