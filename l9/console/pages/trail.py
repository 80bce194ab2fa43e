"""The audit trail, live: what ``l9 tail --follow`` prints, filtered the same way (type glob,
source, run), newest on top; and one entry with its lineage.

The page shows the last entries up to the chain heads it read, and its event stream goes on
from exactly those heads (the cursors are in its address), through ``l9 tail``'s own loop
(:func:`l9.tail.follow`: by seq cursor per chain, woken by NOTIFY), so nothing committed
in between is missed or shown twice.

An entry's lineage: its causes, from the semantic graph (the lineage projector's
``CAUSED_BY`` edges; from the trail, following ``causation_id``, when the graph does not hold
it), and its effects, the envelopes whose causes lead back to it, from the graph too (from
its run's records in the trail when the graph does not hold it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from envelope import EnvelopeError
from l9.tail import Cursors, follow, last_entries
from memory.audit import AuditRecorder, AuditRecordError, AuditStoreError, EntryFilter, StoredEntry
from memory.graph import GraphError, GraphNotFound

from ..backend import Backend, Unavailable, log
from ..web import KEEPALIVE_S, event_stream, fragment, page, sse

#: Entries shown when the page opens (``lines`` in its address: up to :data:`MAX_LINES`).
LINES, MAX_LINES = 50, 500
#: Trail pages following at once (each holds a PostgreSQL connection listening for commits).
MAX_FOLLOWERS = 16
#: How deep the lineage walks go (causes and effects).
MAX_DEPTH = 64
_followers = anyio.Semaphore(MAX_FOLLOWERS)


def filters_of(request: Request) -> EntryFilter:
    q = request.query_params
    return EntryFilter(
        type_glob=(q.get("type") or "").strip() or None,
        source=(q.get("source") or "").strip() or None,
        correlation_id=(q.get("run") or "").strip() or None,
    )


def lines_of(request: Request) -> int:
    raw = request.query_params.get("lines") or str(LINES)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LINES:
        raise HTTPException(400, f"lines: {raw!r} is not a number from 1 to {MAX_LINES}")
    return int(raw)


def encode_cursors(cursors: Cursors) -> str:
    return ",".join(f"{'-' if chain is None else chain}:{seq}" for chain, seq in cursors.items())


def decode_cursors(text: str) -> Cursors:
    """The ``after`` of an events address (``-:120`` for one chain, ``0:40,1:41`` for several)."""
    cursors: Cursors = {}
    for part in text.split(","):
        chain, _, seq = part.partition(":")
        if not seq.isdigit() or not (chain == "-" or chain.isdigit()):
            raise HTTPException(400, f"after: {part!r} is not CHAIN:SEQ")
        cursors[None if chain == "-" else int(chain)] = int(seq)
    return cursors


async def heads_of(store: AuditRecorder) -> Cursors:
    """Where each chain stands now (one chain: the trail's head, read without a chain filter)."""
    if store.layout.chains == 1:
        return {None: (await store.head()).seq}
    return {h.chain: h.seq(store.layout) for h in await store.heads()}


async def history(store: AuditRecorder, cursors: Cursors, filters: EntryFilter, n: int) -> list[StoredEntry]:
    """The newest ``n`` entries matching ``filters`` up to ``cursors``, newest first."""
    found: list[StoredEntry] = []
    for chain, head in cursors.items():
        chain_filters = filters if chain is None else replace(filters, chain=chain)
        found += await last_entries(store, n, chain_filters, head)
    found.sort(key=lambda e: (e.recorded_at, e.seq), reverse=True)
    return found[:n]


def row_of(entry: StoredEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "envelope_id": entry.envelope_id,
        "type": entry.type,
        "source": entry.source,
        "run": entry.correlation_id,
        "time": entry.envelope_time,
        "stream": entry.stream,
        "summary": entry.summary(),
    }


def _query(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k in ("type", "source", "run", "lines") and v}


async def trail_page(request: Request) -> Response:
    filters, n = filters_of(request), lines_of(request)
    backend: Backend = request.app.state.backend
    context: dict[str, Any] = {"query": _query(request), "rows": [], "events": None, "problem": None}
    try:
        store = await backend.trail()
        cursors = await heads_of(store)
        context["rows"] = [row_of(e) for e in await history(store, cursors, filters, n)]
        params = {**_query(request), "after": encode_cursors(cursors)}
        context["events"] = f"/trail/events?{urlencode(params)}"
        context["head"] = max(cursors.values(), default=0)
    except (Unavailable, AuditStoreError) as exc:
        context["problem"] = str(exc)
    return page(request, "trail.html", **context)


async def _follow(store: AuditRecorder, cursors: Cursors, filters: EntryFilter) -> AsyncIterator[str]:
    """Events of new entries (a batch of rows each), as ``l9 tail --follow`` finds them; each
    event's id is where the page then stands (the last seq it was sent, per chain), which the
    browser sends back when it reconnects, so a dropped stream resumes without a gap or a repeat."""
    queue: asyncio.Queue[StoredEntry] = asyncio.Queue()
    shown = dict(cursors)
    async with _followers, anyio.create_task_group() as tg:
        tg.start_soon(follow, store, cursors, filters, queue.put_nowait)
        try:
            while True:
                try:
                    with anyio.fail_after(KEEPALIVE_S):
                        first = await queue.get()
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                batch = [first]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                for entry in batch:
                    chain = None if None in shown else entry.chain
                    shown[chain] = max(shown.get(chain, 0), entry.seq)
                rows = [row_of(e) for e in reversed(batch)]  # newest on top
                html = fragment("_entries.html", rows=rows, fresh=True)
                yield sse("entry", html, encode_cursors(shown))
        finally:
            tg.cancel_scope.cancel()


async def trail_events(request: Request) -> Response:
    filters = filters_of(request)
    resume = request.headers.get("last-event-id") or request.query_params.get("after") or "-:0"
    cursors = decode_cursors(resume)
    store = await _store(request.app.state.backend)
    if _followers.value == 0:
        raise HTTPException(503, f"{MAX_FOLLOWERS} trail pages follow already: close one")
    log.info("console.trail_follow", filters=str(filters), cursors=encode_cursors(cursors))
    return event_stream(_follow(store, cursors, filters), "trail")


# -- one entry and its lineage -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """An envelope of a lineage: what the page shows of it (``seq`` None: not in the trail)."""

    id: str
    type: str | None
    source: str | None
    time: str | None
    seq: int | None = None


async def causes(backend: Backend, store: AuditRecorder, entry: StoredEntry) -> tuple[list[Step], str]:
    """The entry's causes, nearest first, and where they were read (graph or trail)."""
    try:
        lineage = await backend.graph().lineage(entry.envelope_id)
        steps = [Step(s.id, s.type, s.source, s.time) for s in lineage.steps[1:]]
        return steps, "the semantic graph" + (" (truncated)" if lineage.truncated else "")
    except GraphNotFound:
        where = "the audit trail (the graph does not hold this envelope: is the lineage projector running?)"
    except GraphError as exc:
        where = f"the audit trail (the graph is unavailable: {exc})"
    steps, cause = [], entry.causation_id
    while cause is not None and len(steps) < MAX_DEPTH:
        found = await store.entry(cause)
        if found is None:
            steps.append(Step(cause, None, None, None))
            break
        steps.append(
            Step(found.envelope_id, found.type, found.source, found.envelope_time.isoformat(), found.seq)
        )
        cause = found.causation_id
    return steps, where


@dataclass(frozen=True)
class Effect:
    """An effect and its own effects; ``more``: this many further effects of the same type, with
    no effects of their own, are folded into this one."""

    step: Step
    effects: tuple[Effect, ...]
    more: int = 0


#: Siblings of one type without effects of their own shown before the rest are folded.
SHOWN_ALIKE = 3


def _folded(items: list[Effect]) -> tuple[Effect, ...]:
    """``items`` with the leaves of a type past the first :data:`SHOWN_ALIKE` folded into a count."""
    out: list[Effect] = []
    seen: dict[str | None, int] = {}
    for item in items:
        if item.effects:
            out.append(item)
            continue
        kind = item.step.type
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] <= SHOWN_ALIKE:
            out.append(item)
            continue
        last = next(i for i in range(len(out) - 1, -1, -1) if out[i].step.type == kind and not out[i].effects)
        out[last] = replace(out[last], more=out[last].more + 1)
    return tuple(out)


async def effects(
    backend: Backend, store: AuditRecorder, entry: StoredEntry
) -> tuple[tuple[Effect, ...], str]:
    """The envelopes caused by the entry, each with its own effects, and where they were read:
    the semantic graph, or the entry's run in the trail when the graph does not hold it."""
    children: dict[str, list[Step]] = {}
    try:
        for s in await backend.graph().effects(entry.envelope_id):
            if s.cause is not None and s.depth <= MAX_DEPTH:
                children.setdefault(s.cause, []).append(Step(s.id, s.type, s.source, s.time))
        where = "the semantic graph"
    except (GraphNotFound, GraphError) as exc:
        why = "does not hold this envelope" if isinstance(exc, GraphNotFound) else f"is unavailable: {exc}"
        where = f"the audit trail (the graph {why})"
        for e in await store.entries_for_correlation(entry.correlation_id):
            if e.causation_id is not None:
                step = Step(e.envelope_id, e.type, e.source, e.envelope_time.isoformat(), e.seq)
                children.setdefault(e.causation_id, []).append(step)

    def tree(envelope_id: str, depth: int) -> tuple[Effect, ...]:
        if depth >= MAX_DEPTH:
            return ()
        return _folded([Effect(c, tree(c.id, depth + 1)) for c in children.get(envelope_id, [])])

    return tree(entry.envelope_id, 0), where


def payload_of(entry: StoredEntry) -> str:
    """The stored envelope's data as indented JSON (or why it cannot be shown)."""
    try:
        return json.dumps(entry.envelope().data, indent=2, sort_keys=True, default=str)
    except (AuditRecordError, EnvelopeError) as exc:
        return f"(not shown: {exc})"


async def entry_page(request: Request) -> Response:
    envelope_id = request.path_params["envelope_id"]
    backend: Backend = request.app.state.backend
    store = await _store(backend)
    entry = await store.entry(envelope_id)
    if entry is None:
        raise HTTPException(404, f"envelope {envelope_id} is not in the audit trail (yet)")
    found_causes, where = await causes(backend, store, entry)
    found_effects, effects_where = await effects(backend, store, entry)
    return page(
        request,
        "entry.html",
        nav="trail",
        entry=entry,
        summary=entry.summary(),
        payload=payload_of(entry),
        causes=list(reversed(found_causes)),  # the run's first envelope on top
        causes_from=where,
        effects=found_effects,
        effects_from=effects_where,
    )


async def _store(backend: Backend) -> AuditRecorder:
    try:
        return await backend.trail()
    except Unavailable as exc:
        raise HTTPException(503, str(exc)) from None


routes = [
    Route("/trail", trail_page),
    Route("/trail/events", trail_events),
    Route("/trail/entry/{envelope_id}", entry_page),
]
