"""The SymPy worker's Prometheus metrics, in prometheus-client's default registry.

What an agent process's admin port (``L9_ADMIN_PORT``) shows beside the bus's metrics::

    l9_sympy_operation_duration_seconds   one request, taken to answered (histogram; labels
                                          ``operation``, ``backend``, ``outcome``)
    l9_sympy_cache_requests_total         cache lookups (labels ``operation``, ``result``:
                                          ``hit`` or ``miss``)
    l9_sympy_pool_restarts_total          pool workers replaced (label ``reason``)

Every label value comes from a fixed list: the operations (``operation``), the cache key's
backends (``sympy``, the evaluation backends, the code languages), ``ok`` or an error kind
(``outcome``), the pool's reasons (:data:`RESTART_REASONS`); anything else is ``-``, so no
request can grow the metrics without bound. Label children are looked up once per label set
and kept. The metrics are kept whether or not the process has an admin port (in-process
objects); the Redis counters of ``l9 sympy stats`` (:mod:`.cache`) and the events on
``sympy.events`` (:mod:`.telemetry`) are kept as before, beside them.
"""

from __future__ import annotations

from typing import Any, get_args

from prometheus_client import Counter, Histogram

from agents.contracts.sympy.errors import KINDS
from agents.contracts.sympy.payloads import REPLY_FOR, Backend, Language

#: The label value of anything outside its fixed list.
UNKNOWN = "-"
OPERATIONS: frozenset[str] = frozenset(model.op for model in REPLY_FOR)
#: The cache key's backends: ``sympy`` (symbolic operations), the evaluation backends, the languages.
BACKENDS: frozenset[str] = frozenset({"sympy", *get_args(Backend), *get_args(Language)})
OUTCOMES: frozenset[str] = frozenset({"ok", *KINDS})
#: Why the pool replaced a worker (:class:`.pool.WorkerPool`): its job ran past its bound, ran
#: out of memory, the process died during a job or was found dead before one, its caller was
#: cancelled mid-job, or the exchange with it failed otherwise.
RESTART_REASONS: frozenset[str] = frozenset({"timeout", "memory", "crash", "dead", "cancelled", "error"})
#: Symbolic work: a cached answer in a millisecond, a runaway stopped at its timeout (10 s by
#: default), a kernel build within a minute or more.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)

OPERATION_SECONDS = Histogram(
    "l9_sympy_operation_duration_seconds",
    "SymPy requests, from taken to answered (cache hits included).",
    ("operation", "backend", "outcome"),
    buckets=BUCKETS,
)
CACHE_REQUESTS = Counter(
    "l9_sympy_cache_requests", "SymPy result cache lookups, hit or miss.", ("operation", "result")
)
POOL_RESTARTS = Counter("l9_sympy_pool_restarts", "SymPy pool workers replaced, by reason.", ("reason",))

_seconds: dict[tuple[str, str, str], Any] = {}
_lookups: dict[tuple[str, bool], Any] = {}
_restarts: dict[str, Any] = {}


def _bounded(value: str, known: frozenset[str]) -> str:
    return value if value in known else UNKNOWN


def observe_operation(operation: str, backend: str, outcome: str, seconds: float) -> None:
    """One request answered in ``seconds``: ``outcome`` is ``ok`` or the error's kind."""
    labels = (_bounded(operation, OPERATIONS), _bounded(backend, BACKENDS), _bounded(outcome, OUTCOMES))
    child = _seconds.get(labels)
    if child is None:
        child = _seconds[labels] = OPERATION_SECONDS.labels(*labels)
    child.observe(seconds)


def count_lookup(operation: str, hit: bool) -> None:
    """One cache lookup of ``operation``'s result (:class:`.cache.ResultCache`'s ``on_lookup``)."""
    labels = (_bounded(operation, OPERATIONS), hit)
    child = _lookups.get(labels)
    if child is None:
        child = _lookups[labels] = CACHE_REQUESTS.labels(labels[0], "hit" if hit else "miss")
    child.inc()


def count_restart(reason: str) -> None:
    """One pool worker replaced (:class:`.pool.WorkerPool`'s ``on_replace``)."""
    label = _bounded(reason, RESTART_REASONS)
    child = _restarts.get(label)
    if child is None:
        child = _restarts[label] = POOL_RESTARTS.labels(label)
    child.inc()
