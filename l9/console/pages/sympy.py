"""The SymPy worker: the last 60 seconds of ``sympy.events`` per operation and backend (count,
rate, latency percentiles, cache hit ratio, errors), and the cache's hit and miss counters,
read as ``l9 sympy stats`` reads them (:func:`agents.sympy.telemetry.read_window` and
``summarise``; :meth:`agents.sympy.cache.ResultCache.stats`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents.sympy.cache import ResultCache
from agents.sympy.cache import summarise as summarise_cache
from agents.sympy.telemetry import WINDOW_S, Timed, read_window
from agents.sympy.telemetry import summarise as summarise_window

from ..backend import Backend
from ..web import fragment, live, live_page


def per_second(events: list[Timed], now: float, window_s: float = WINDOW_S) -> list[int]:
    """Operations in each second of the window, oldest first."""
    counts = [0] * int(window_s)
    for t in events:
        age = now - t.at
        if 0 <= age < window_s:
            counts[int(window_s) - 1 - int(age)] += 1
    return counts


def by_backend(events: list[Timed], now: float) -> list[dict[str, Any]]:
    """One row per (operation, backend) of the window, busiest first."""
    rows = []
    for backend in sorted({t.event.backend for t in events}):
        summary = summarise_window([t for t in events if t.event.backend == backend], now)
        rows += [{"op": op, "backend": backend, **row} for op, row in summary["operations"].items()]
    return sorted(rows, key=lambda r: (-r["count"], r["op"], r["backend"]))


async def snapshot(backend: Backend) -> dict[str, Any]:
    redis, keys = backend.redis, backend.keys
    now, events = await read_window(redis, keys, backend.verifier, WINDOW_S)
    counters = await ResultCache(redis, keys, ttl_s=1, max_bytes=0).stats()
    return {
        "window": summarise_window(events, now),
        "rows": by_backend(events, now),
        "rate": per_second(events, now),
        "errors": per_second([t for t in events if t.event.outcome == "error"], now),
        "cache": summarise_cache(counters),
    }


def _renderer(request: Request) -> Any:
    backend: Backend = request.app.state.backend

    async def render() -> str:
        return fragment("_sympy.html", **await snapshot(backend))

    return render


async def sympy_page(request: Request) -> Response:
    return await live_page(request, "sympy.html", _renderer(request), "/sympy/events")


async def sympy_events(request: Request) -> Response:
    return live(request, _renderer(request), "update")


routes = [Route("/sympy", sympy_page), Route("/sympy/events", sympy_events)]
