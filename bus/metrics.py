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

:class:`DeliveryMetrics` is the per-entry loop's (``StreamConsumer(metrics=...)``): a check at
the head of the consumer's own ``middlewares`` (what reaches the handlers: a plain call, no
coroutine of its own) and hooks the loop calls on the outcome (returned, a failed attempt, a
dead letter), which time the delivery from that check. :class:`BatchMetrics` is the batch
loop's, around its stream source and handler. Both keep when their loop last went round,
for an admin port's ``/healthz``.
Label children are looked up once per (stream, type) and kept; without an admin port none
of this is built, and the loops pay one attribute check. The three series every delivery
moves (received, handled, the handler's time) are plain numbers a delivery adds to without a
lock (every loop of a process runs in its event loop's thread), turned into samples at each
scrape (:class:`DeliveryCounts`): a prometheus-client child takes a lock per increment, and
those three cost some 3 us a delivery.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import structlog
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from envelope import PayloadRegistry
from envelope import registry as default_registry

from .batch import BatchHandler, Entry, Rejected, Staged, StreamSource
from .connection import RedisClient, as_text, execute_many
from .index import known_streams
from .keys import Keys

if TYPE_CHECKING:
    from .consumer import Delivery

log = structlog.get_logger("l9.bus.metrics")

_PER_TYPE = ("stream", "group", "type")
FAILED = Counter("l9_envelopes_failed", "Failed attempts (retried, or dead-lettered at the cap).", _PER_TYPE)
RETRIED = Counter("l9_envelopes_retried", "Deliveries after the first (attempt > 1).", _PER_TYPE)
DEAD_LETTERED = Counter(
    "l9_envelopes_dead_lettered", "Entries dead-lettered by this process.", (*_PER_TYPE, "reason")
)
#: The upper bounds of ``l9_handler_duration_seconds``'s buckets (and +Inf).
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Counts:
    """What deliveries of one (stream, group, type) add to: received, handled, and the handler
    time's histogram (a count per bucket of :data:`HANDLER_BUCKETS`, the last one +Inf)."""

    __slots__ = ("buckets", "handled", "received", "seconds")

    def __init__(self) -> None:
        self.received = 0
        self.handled = 0
        self.buckets = [0] * (len(HANDLER_BUCKETS) + 1)
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(HANDLER_BUCKETS, seconds)] += 1  # the first bound >= it ("le")
        self.seconds += seconds


class DeliveryCounts(Collector):
    """``l9_envelopes_received_total``, ``l9_envelopes_handled_total`` and
    ``l9_handler_duration_seconds`` of every loop of this process, from their :class:`Counts`."""

    HELP = {
        "l9_envelopes_received": "Deliveries that reached the handler chain.",
        "l9_envelopes_handled": "Deliveries whose handler returned.",
        "l9_handler_duration_seconds": "Time in the handler chain, per delivery.",
    }

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], Counts] = {}

    def of(self, stream: str, group: str, type_: str) -> Counts:
        key = (stream, group, type_)
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = Counts()
        return counts

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        help_ = self.HELP
        return (
            CounterMetricFamily("l9_envelopes_received", help_["l9_envelopes_received"], labels=_PER_TYPE),
            CounterMetricFamily("l9_envelopes_handled", help_["l9_envelopes_handled"], labels=_PER_TYPE),
            HistogramMetricFamily(
                "l9_handler_duration_seconds", help_["l9_handler_duration_seconds"], labels=_PER_TYPE
            ),
        )

    def collect(self) -> Iterable[Metric]:
        received, handled, seconds = self._families()
        bounds = [*(repr(float(b)) for b in HANDLER_BUCKETS), "+Inf"]
        for labels, counts in list(self.counts.items()):
            received.add_metric(labels, counts.received)
            handled.add_metric(labels, counts.handled)
            if any(counts.buckets):  # a batch loop has no time per delivery
                cumulative, total = [], 0
                for bound, n in zip(bounds, list(counts.buckets), strict=True):
                    total += n
                    cumulative.append((bound, total))
                seconds.add_metric(labels, cumulative, counts.seconds)
        return [received, handled, seconds]


#: The process's :class:`DeliveryCounts`, in the default registry.
COUNTS = DeliveryCounts()
REGISTRY.register(COUNTS)
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
    """What one (stream, group, type) counts: its plain counts, and its label children."""

    counts: Counts
    failed: Any
    retried: Any


def _outcomes(stream: str, group: str, type_: str) -> _Outcomes:
    labels = (stream, group, type_)
    return _Outcomes(COUNTS.of(*labels), FAILED.labels(*labels), RETRIED.labels(*labels))


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

    def reached(self, d: Delivery) -> None:
        """The chain's check (after the consumer's own steps, before the other middlewares): the
        delivery reached the handlers (its type is known: the checks loaded its payload). Its time
        runs from here until :meth:`returned`, :meth:`failed` or :meth:`dead_lettered`."""
        children = self._of(d.stream, d.envelope.type)
        children.counts.received += 1
        if d.attempt > 1:
            children.retried.inc()
        d.metered_at = time.perf_counter()

    def _timed(self, d: Delivery) -> Counts | None:
        """``d``'s time since :meth:`reached`, observed once (None: it never reached it)."""
        started = d.metered_at
        if started is None:
            return None
        d.metered_at = None
        counts = self._of(d.stream, d.envelope.type).counts
        counts.observe(time.perf_counter() - started)
        return counts

    def returned(self, d: Delivery) -> None:
        """Hook: the chain returned (``StreamConsumer._process``): handled, and its time."""
        counts = self._timed(d)
        if counts is not None:
            counts.handled += 1

    def failed(self, d: Delivery) -> None:
        """Hook: an attempt failed (``StreamConsumer._failed``): its time too."""
        self._timed(d)
        self._of(d.stream, self._type(d)).failed.inc()

    def dead_lettered(self, d: Delivery, reason: str) -> None:
        """Hook: ``d`` went to the dead-letter stream for ``reason`` (its time, if a handler's
        refusal)."""
        self._timed(d)
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
            self._of(*key).counts.received += n
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
                self._of(*key).counts.handled += n
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
        await refreshed(self, self.refresh, self._forget, interval_s, "metrics.group_stats_failed")

    def _forget(self) -> None:
        self.groups, self.dead = {}, {}

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


async def refreshed(
    collector: Collector,
    refresh: Callable[[], Awaitable[None]],
    forget: Callable[[], None],
    interval_s: float,
    event: str,
) -> None:
    """``collector`` in the default registry, ``refresh`` ed every ``interval_s`` until cancelled
    (then unregistered); a failed refresh is logged as ``event`` and ``forget`` s the figures
    (no series rather than stale ones)."""
    REGISTRY.register(collector)
    try:
        while True:
            try:
                await refresh()
            except Exception as exc:
                log.warning(event, error=f"{type(exc).__name__}: {exc}")
                forget()
            await anyio.sleep(interval_s)
    finally:
        REGISTRY.unregister(collector)


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
