"""Dead letters: why each was given up on (reason, detail, group, deliveries), what it is
(type, source, envelope), filtered; and replay, of one letter or of every letter the filter
shows, which is ``l9 dead replay`` (:func:`l9.dead.replay`: the same envelope back on its
stream, a letter replayed by someone else meanwhile left out).

A replay needs a signed-in operator (:func:`l9.console.auth.writer`); like ``l9 dead replay``
it leaves the envelope as it was (the trail already holds it: the auditor skips the repeat),
and the console logs who replayed what (``console.dead_replayed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from redis.exceptions import RedisError
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bus import check_stream_name
from l9.dead import DeadLetter, NotDead, dead_letter, replay
from l9.status import stream_names

from ..auth import writer
from ..backend import Backend, log
from ..web import form_of, fragment, live, live_page

#: Dead letters read per stream.
LIMIT = 200


@dataclass(frozen=True)
class Letter:
    """A dead letter and the source of its envelope (a plain field of the entry)."""

    letter: DeadLetter
    source: str


@dataclass(frozen=True)
class DeadFilter:
    """What the page shows: one stream (or all), a reason, a type glob, a source (an agent name
    matches each of its instances), at least so many deliveries."""

    stream: str = ""
    reason: str = ""
    type: str = ""
    source: str = ""
    min_deliveries: int = 0

    @classmethod
    def of(cls, params: QueryParams | dict[str, str]) -> DeadFilter:
        stream = (params.get("stream") or "").strip()
        if stream:
            try:
                check_stream_name(stream)
            except ValueError as exc:
                raise HTTPException(400, f"stream filter: {exc}") from None
        raw = (params.get("min_deliveries") or "0").strip() or "0"
        if not raw.isdigit():
            raise HTTPException(400, f"deliveries filter: {raw!r} is not a whole number")
        return cls(
            stream=stream,
            reason=(params.get("reason") or "").strip(),
            type=(params.get("type") or "").strip(),
            source=(params.get("source") or "").strip(),
            min_deliveries=int(raw),
        )

    def matches(self, item: Letter) -> bool:
        d = item.letter
        source_ok = (
            not self.source
            or item.source == self.source
            or ("://" not in self.source and item.source.startswith(f"agent://{self.source}/"))
        )
        return (
            (not self.reason or d.reason == self.reason)
            and (not self.type or fnmatchcase(d.type, self.type))
            and source_ok
            and d.deliveries >= self.min_deliveries
        )

    def query(self) -> str:
        fields = {k: str(v) for k, v in self.__dict__.items() if v}
        return str(QueryParams(fields))


async def letters(backend: Backend, stream: str | None = None) -> list[Letter]:
    """The oldest :data:`LIMIT` dead letters of ``stream`` (or of every stream)."""
    redis, keys = backend.redis, backend.keys
    names = [stream] if stream else await stream_names(redis, keys)
    found = []
    for name in names:
        rows: Any = await redis.xrange(keys.dead(name), count=LIMIT)
        for entry_id, fields in rows:
            source = fields.get(b"source", b"").decode(errors="replace")
            found.append(Letter(dead_letter(name, entry_id, fields), source))
    return found


def _renderer(request: Request, chosen: DeadFilter) -> Any:
    backend: Backend = request.app.state.backend

    async def render() -> str:
        every = await letters(backend, chosen.stream or None)
        shown = [item for item in every if chosen.matches(item)]
        reasons = sorted({item.letter.reason for item in every})
        return fragment(
            "_dead.html", letters=shown, total=len(every), reasons=reasons, chosen=chosen, limit=LIMIT
        )

    return render


async def dead_page(request: Request) -> Response:
    chosen = DeadFilter.of(request.query_params)
    backend: Backend = request.app.state.backend
    try:
        names = await stream_names(backend.redis, backend.keys)
    except RedisError:  # the live part says so, and tries again
        names = []
    render = _renderer(request, chosen)
    events = f"/dead/events?{chosen.query()}"
    return await live_page(request, "dead.html", render, events, chosen=chosen, streams=names)


async def dead_events(request: Request) -> Response:
    return live(request, _renderer(request, DeadFilter.of(request.query_params)), "update")


async def replay_one(request: Request) -> Response:
    operator = writer(request)
    fields = await form_of(request)
    stream, letter_id = DeadFilter.of({"stream": fields.get("stream", "")}).stream, fields.get("id", "")
    if not stream or not letter_id:
        raise HTTPException(400, "a replay names the stream and the dead-letter id")
    backend: Backend = request.app.state.backend
    try:
        done = await replay(backend.redis, backend.keys, stream, [letter_id])
    except NotDead as exc:
        raise HTTPException(404, str(exc)) from None
    log.info("console.dead_replayed", operator=operator.name, stream=stream, replayed=done)
    if not done:
        message = f"dead letter {letter_id} was replayed by someone else meanwhile"
    else:
        message = f"dead letter {letter_id} replayed on {stream} as entry {done[letter_id]}"
    return HTMLResponse(fragment("_notice.html", ok=bool(done), message=message))


async def replay_matching(request: Request) -> Response:
    """Replay every dead letter the filter in the form matches (one at a time: a letter
    someone else replayed meanwhile is counted apart, the others still go)."""
    operator = writer(request)
    chosen = DeadFilter.of(await form_of(request))
    backend: Backend = request.app.state.backend
    matching = [item.letter for item in await letters(backend, chosen.stream or None) if chosen.matches(item)]
    replayed: dict[str, dict[str, str]] = {}
    gone = 0
    for d in matching:
        try:
            done = await replay(backend.redis, backend.keys, d.stream, [d.id])
        except NotDead:
            done = {}
        if done:
            replayed.setdefault(d.stream, {}).update(done)
        else:
            gone += 1
    count = sum(len(v) for v in replayed.values())
    log.info("console.dead_replayed", operator=operator.name, filter=chosen.query(), replayed=replayed)
    per_stream = ", ".join(f"{len(v)} on {s}" for s, v in sorted(replayed.items()))
    message = f"{count} dead letter(s) replayed" + (f" ({per_stream})" if per_stream else "")
    if gone:
        message += f"; {gone} were replayed by someone else meanwhile"
    return HTMLResponse(fragment("_notice.html", ok=count > 0 or not matching, message=message))


routes = [
    Route("/dead", dead_page),
    Route("/dead/events", dead_events),
    Route("/dead/replay", replay_one, methods=["POST"]),
    Route("/dead/replay-matching", replay_matching, methods=["POST"]),
]
