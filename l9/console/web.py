"""What every page shares: the templates and their filters, whole pages and fragments, the
server-sent events a live part of a page listens to, and small inline SVG charts.

A live part is a fragment of HTML the server renders again every ``refresh_s`` and sends as an
SSE event when it changed (a comment every :data:`KEEPALIVE_S` otherwise, so proxies keep the
connection); htmx's SSE extension swaps it into the page. The event stream ends when the
browser goes away (starlette cancels it).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import jinja2
from markupsafe import Markup
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.templating import Jinja2Templates

from l9.tail import short_id

from .auth import operator_of
from .backend import Unavailable, log, redis_trouble

HERE = Path(__file__).resolve().parent
#: The largest form body read (a pasted anchor key is well under 1 KiB).
MAX_FORM_BYTES = 64 * 1024
KEEPALIVE_S = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

Render = Callable[[], Awaitable[str]]


def _ago(value: float | datetime | None) -> str:
    """``12 s ago`` of a Unix time or an aware datetime."""
    if value is None:
        return "-"
    at = value.timestamp() if isinstance(value, datetime) else value
    seconds = max(0.0, time.time() - at)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86_400:.0f} d ago"


def _idle(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    return f"{seconds:.1f} s" if seconds < 90 else _ago(time.time() - seconds).replace(" ago", "")


def _utc(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def sparkline(values: Sequence[float | None], width: int = 120, height: int = 28) -> Markup:
    """A small SVG line of ``values`` (left: oldest), scaled to its own maximum."""
    points = [0.0 if v is None else float(v) for v in values]
    if len(points) < 2:
        points = [points[0] if points else 0.0] * 2
    top = max(points) or 1.0
    step = width / (len(points) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(points)
    )
    area = f"0,{height} {coords} {width},{height}"
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'preserveAspectRatio="none" aria-hidden="true"><polygon points="{area}" class="spark-area"/>'
        f'<polyline points="{coords}" class="spark-line"/></svg>'
    )


def bar(value: float, top: float) -> Markup:
    """A horizontal bar of ``value`` out of ``top`` (a lag, a count)."""
    share = 0 if top <= 0 else min(100.0, 100.0 * value / top)
    return Markup(f'<span class="bar"><span style="width:{share:.1f}%"></span></span>')


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ago=_ago, idle=_idle, utc=_utc, ms=_ms, pct=_pct, short=short_id)
    env.globals.update(sparkline=sparkline, bar=bar)
    return env


@cache
def templates() -> Jinja2Templates:
    return Jinja2Templates(env=environment())


def page(request: Request, name: str, *, status_code: int = 200, **context: Any) -> Response:
    """A whole page (the layout around it knows who is signed in and which page is current)."""
    config = request.app.state.config
    operator = operator_of(request, config.token)
    context.setdefault("nav", name.split(".")[0])
    namespace = request.app.state.backend.keys.namespace
    return templates().TemplateResponse(
        request, name, {"operator": operator, "namespace": namespace, **context}, status_code=status_code
    )


def fragment(name: str, **context: Any) -> str:
    """A part of a page, rendered on its own (a live update, an htmx answer)."""
    return environment().get_template(name).render(**context)


def sse(event: str, data: str, event_id: str | None = None) -> str:
    """One server-sent event: every line of ``data`` its own ``data:`` line; with ``event_id``,
    what the browser sends back as ``Last-Event-ID`` when it reconnects."""
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n{lines}\n"


async def rendered(render: Render) -> str:
    """What ``render`` gives, or the unavailable notice of the store it could not reach."""
    try:
        return await render()
    except Unavailable as exc:
        return fragment("_unavailable.html", message=str(exc))
    except RedisError as exc:
        return fragment("_unavailable.html", message=str(redis_trouble(exc)))


async def changes(render: Render, event: str, every_s: float) -> AsyncIterator[str]:
    """The fragment as an event each time it changes, looked at every ``every_s`` seconds."""
    last, quiet_since = None, time.monotonic()
    while True:
        html = await rendered(render)
        if html != last:
            last, quiet_since = html, time.monotonic()
            yield sse(event, html)
        elif time.monotonic() - quiet_since > KEEPALIVE_S:
            quiet_since = time.monotonic()
            yield ": keep-alive\n\n"
        await anyio.sleep(every_s)


def event_stream(events: AsyncIterator[str], what: str) -> StreamingResponse:
    async def logged() -> AsyncIterator[str]:
        log.debug("console.events_opened", events=what)
        try:
            async for chunk in events:
                yield chunk
        finally:
            log.debug("console.events_closed", events=what)

    return StreamingResponse(logged(), media_type="text/event-stream", headers=SSE_HEADERS)


def live(request: Request, render: Render, event: str) -> StreamingResponse:
    """The SSE response of a live part of a page."""
    every = request.app.state.config.refresh_s
    return event_stream(changes(render, event, every), event)


async def live_page(request: Request, name: str, render: Render, events: str, **context: Any) -> Response:
    """A page whose live part is ``render``'s fragment now, then each change of it from the
    SSE stream at ``events`` (event ``update``)."""
    body = Markup(await rendered(render))
    return page(request, name, body=body, events=events, **context)


async def form_of(request: Request) -> dict[str, str]:
    """A urlencoded form's fields (the last value of a repeated one); 413 when too large."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
