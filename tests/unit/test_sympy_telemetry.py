"""The sliding window over ``sympy.events``: what falls in it, rates, nearest-rank percentiles, hit ratio."""

from __future__ import annotations

from agents.sympy.telemetry import OperationEvent, Timed, summarise


def event(op: str, ms: float, *, cached: bool = False, error: str | None = None) -> OperationEvent:
    outcome = "ok" if error is None else "error"
    return OperationEvent(
        op=op,
        backend="sympy",
        duration_ms=ms,
        cached=cached,
        outcome=outcome,
        error=error,
        requester="agent://t/x",
    )


def test_only_the_last_window_counts_and_rows_are_per_operation() -> None:
    now = 1_000.0
    events = [
        Timed(now - 61, event("simplify", 999.0)),  # outside the window
        *(Timed(now - 30 + i * 0.1, event("simplify", float(i + 1), cached=i % 2 == 1)) for i in range(100)),
        Timed(now - 1, event("simplify", 5000.0, error="timeout.wall_clock")),
        Timed(now - 2, event("evaluate", 2.0, cached=True)),
        Timed(now + 5, event("evaluate", 9.0)),  # after now: not yet in this window
    ]
    summary = summarise(events, now, window_s=60)
    simplify, evaluate, total = (
        summary["operations"]["simplify"],
        summary["operations"]["evaluate"],
        summary["total"],
    )
    assert simplify["count"] == 101 and simplify["errors"] == 1
    assert simplify["per_s"] == round(101 / 60, 3)
    assert (simplify["p50_ms"], simplify["p95_ms"], simplify["p99_ms"]) == (51.0, 96.0, 100.0)
    assert simplify["hit_ratio"] == 0.5, "a refusal is neither a hit nor a miss"
    assert evaluate == {
        "count": 1, "per_s": round(1 / 60, 3), "p50_ms": 2.0, "p95_ms": 2.0, "p99_ms": 2.0,
        "hit_ratio": 1.0, "errors": 0,
    }  # fmt: skip
    assert total["count"] == 102 and total["errors"] == 1
    assert list(summary["operations"]) == ["evaluate", "simplify"]


def test_an_empty_window_has_no_percentiles_and_no_ratio() -> None:
    summary = summarise([], 50.0)
    assert summary["operations"] == {}
    assert summary["total"] == {
        "count": 0, "per_s": 0.0, "p50_ms": None, "p95_ms": None, "p99_ms": None,
        "hit_ratio": None, "errors": 0,
    }  # fmt: skip
