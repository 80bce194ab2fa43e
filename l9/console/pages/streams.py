"""The front page: every stream of the namespace with its consumer groups, their lag and
pending entries, their consumers (live while their heartbeat key exists, lapsed after) and
the stream's dead letters, as ``l9 status`` reads them (:func:`l9.status.collect_status`).

RPC reply streams (``rpc.<client>``, one per client of a request/reply call) are folded
below the others. Each open page keeps the lag of every group over its last :data:`HISTORY` looks, drawn as a
small chart beside the number.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bus.keys import RPC_PREFIX
from l9.status import collect_status

from ..web import fragment, live, live_page

#: Looks at the streams a page's lag charts keep.
HISTORY = 60


@dataclass
class LagHistory:
    """The lag of each (stream, group) over the last looks of one open page."""

    samples: dict[tuple[str, str], deque[int]] = field(default_factory=dict)

    def add(self, status: dict[str, Any]) -> None:
        for stream in status["streams"]:
            for group in stream["groups"]:
                key = (stream["name"], group["name"])
                self.samples.setdefault(key, deque(maxlen=HISTORY)).append(group["lag"] or 0)

    def of(self, stream: str, group: str) -> list[int]:
        return list(self.samples.get((stream, group), ()))


def totals(status: dict[str, Any]) -> dict[str, int]:
    """The tiles above the streams: counts over the whole namespace."""
    groups = [g for s in status["streams"] for g in s["groups"]]
    consumers = [c for g in groups for c in g["consumers"]]
    return {
        "streams": len(status["streams"]),
        "groups": len(groups),
        "live": sum(1 for c in consumers if c["alive"]),
        "lapsed": sum(1 for c in consumers if not c["alive"]),
        "lag": sum(g["lag"] or 0 for g in groups),
        "pending": sum(g["pending"] for g in groups),
        "dead": sum(s["dead_letters"] for s in status["streams"]),
    }


def _renderer(request: Request, history: LagHistory) -> Any:
    backend = request.app.state.backend

    async def render() -> str:
        status = await collect_status(backend.redis, backend.keys)
        history.add(status)
        top = max([g["lag"] or 0 for s in status["streams"] for g in s["groups"]] + [1])
        replies = [s for s in status["streams"] if s["name"].startswith(RPC_PREFIX)]
        return fragment(
            "_streams.html", status=status, totals=totals(status), history=history, top=top, replies=replies
        )

    return render


async def streams_page(request: Request) -> Response:
    render = _renderer(request, LagHistory())
    return await live_page(request, "streams.html", render, "/streams/events")


async def streams_events(request: Request) -> Response:
    return live(request, _renderer(request, LagHistory()), "update")


routes = [Route("/", streams_page), Route("/streams/events", streams_events)]
