"""The auditor's Prometheus metrics (served on its admin port, ``l9/admin.py``): how long a
batch's commit to the trail takes, how many entries a batch holds, and each chain's head."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

COMMIT_SECONDS = Histogram(
    "l9_audit_commit_duration_seconds",
    "Time of one batch's append to the trail (the step under the chain lock), failed tries too.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_ENTRIES = Histogram(
    "l9_audit_batch_entries",
    "Entries per committed batch (stored, repeats and refused alike).",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
RECORDS = Counter(
    "l9_audit_records",
    "Entries of committed batches, by what became of them: stored (new in the trail), duplicate "
    "(an envelope id the trail holds already), refused (dead-lettered: undecodable, bad signature).",
    ("outcome",),
)
HEAD_SEQ = Gauge(
    "l9_audit_chain_head_seq",
    "The highest seq of each chain this process committed (the chain's head as it last saw it; "
    "a head that stops moving while envelopes flow is a stalled chain).",
    ("chain",),
)
HEAD_AT = Gauge(
    "l9_audit_chain_head_timestamp_seconds",
    "When this process last moved each chain's head (Unix time).",
    ("chain",),
)

_STORED, _DUPLICATE, _REFUSED = (RECORDS.labels(o) for o in ("stored", "duplicate", "refused"))
_head: dict[int, int] = {}  # chain -> the highest seq set on HEAD_SEQ


@contextmanager
def timed_commit() -> Iterator[None]:
    """Time one commit into ``l9_audit_commit_duration_seconds`` (however it ends)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        COMMIT_SECONDS.observe(time.perf_counter() - start)


def committed(entries: int, stored: int, duplicates: int, refused: int, heads: Mapping[int, int]) -> None:
    """A batch of ``entries`` is committed: its counts, and the heads it moved its chains to
    (chain -> highest seq committed in it)."""
    BATCH_ENTRIES.observe(entries)
    _STORED.inc(stored)
    _DUPLICATE.inc(duplicates)
    _REFUSED.inc(refused)
    now = None
    for chain, seq in heads.items():
        if seq > _head.get(chain, 0):
            _head[chain] = seq
            label = str(chain)
            HEAD_SEQ.labels(label).set(seq)
            HEAD_AT.labels(label).set(now := now or time.time())
