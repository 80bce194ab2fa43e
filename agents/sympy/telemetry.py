"""Per-operation telemetry: one event per operation on ``sympy.events``, and a sliding window over it.

The worker publishes an :class:`OperationEvent` after every reply (success or
refusal), so live watchers can follow the stream (``l9 tail``) and the audit
trail keeps them; the same operation becomes rows of ``l9_metrics.sympy_metrics``
(and ``sympy_codegen_metrics``) in PostgreSQL (:func:`metric_rows`, written in
batches by :class:`memory.postgres.metrics.MetricsWriter`).

The sliding window is not state inside a worker: it is the last ``WINDOW_S``
seconds of that stream (stream ids are the Redis server's milliseconds), read
with one ``XRANGE`` and summarised: rates, latency percentiles, cache hit ratio
and errors per operation, across every worker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from bus import Keys
from bus.connection import RedisClient
from bus.topology import SYMPY_EVENTS_STREAM as EVENTS_STREAM
from envelope import EnvelopeError, PacketEnvelope, Payload, Verifier, decode, payload
from memory.postgres.metrics import CodegenMetric, Metric, OperationMetric

#: Operations that generate code (a row in ``sympy_codegen_metrics`` too; the backend is the language).
CODEGEN_OPS = frozenset({"generate_code", "compile"})
WINDOW_S = 60.0


@payload("l9.sympy.operation.v1")
class OperationEvent(Payload):
    """One operation the worker answered: what, how, how long, from the cache or not."""

    op: str
    backend: str
    expr_hash: str | None = None
    duration_ms: float
    cached: bool = False
    outcome: Literal["ok", "error"] = "ok"
    #: ``<kind>.<rule>`` of a refusal.
    error: str | None = None
    requester: str


def metric_rows(event: PacketEnvelope, operation: OperationEvent, request: PacketEnvelope) -> list[Metric]:
    """The PostgreSQL rows of one operation (ids: its ``l9.sympy.operation.v1`` envelope's)."""
    at: datetime = event.time
    rows: list[Metric] = [
        OperationMetric(
            event.id, request.id, request.correlation_id, operation.op, operation.backend,
            operation.expr_hash, operation.duration_ms, operation.cached, operation.outcome,
            operation.error, operation.requester, at,
        )
    ]  # fmt: skip
    if operation.op in CODEGEN_OPS:
        rows.append(
            CodegenMetric(
                event.id, request.id, operation.op, operation.backend, operation.expr_hash,
                operation.duration_ms, operation.outcome == "ok", operation.cached, operation.error, at,
            )
        )  # fmt: skip
    return rows


@dataclass(frozen=True)
class Timed:
    """An event and when the stream received it (seconds since the epoch, Redis clock)."""

    at: float
    event: OperationEvent


async def read_window(
    redis: RedisClient, keys: Keys, verifier: Verifier | None, window_s: float = WINDOW_S
) -> tuple[float, list[Timed]]:
    """``(now, events of the last window_s seconds)``; ``now`` is the Redis server's clock."""
    seconds, micros = await redis.time()
    now = seconds + micros / 1e6
    entries: Any = await redis.xrange(
        keys.stream(EVENTS_STREAM), min=f"{int((now - window_s) * 1000)}", max="+"
    )
    timed = []
    for entry_id, fields in entries or ():
        try:
            _, event = decode(fields, verifier)
        except EnvelopeError:
            continue  # not ours to judge here: the auditor dead-letters it
        if isinstance(event, OperationEvent):
            ms = (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)).split("-")[0]
            timed.append(Timed(int(ms) / 1000, event))
    return now, timed


def summarise(events: Iterable[Timed], now: float, window_s: float = WINDOW_S) -> dict[str, Any]:
    """Per operation and in total: count, rate per second, latency p50/p95/p99, hit ratio, errors."""
    recent = [t.event for t in events if now - window_s <= t.at <= now]
    ops = sorted({e.op for e in recent})
    return {
        "window_s": window_s,
        "operations": {op: _row([e for e in recent if e.op == op], window_s) for op in ops},
        "total": _row(recent, window_s),
    }


def _row(events: list[OperationEvent], window_s: float) -> dict[str, Any]:
    durations = sorted(e.duration_ms for e in events)
    answered = [e for e in events if e.outcome == "ok"]
    hits = sum(1 for e in answered if e.cached)
    return {
        "count": len(events),
        "per_s": round(len(events) / window_s, 3),
        "p50_ms": _percentile(durations, 0.50),
        "p95_ms": _percentile(durations, 0.95),
        "p99_ms": _percentile(durations, 0.99),
        "hit_ratio": round(hits / len(answered), 4) if answered else None,
        "errors": len(events) - len(answered),
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)
