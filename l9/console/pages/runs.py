"""Extraction runs, from the audit trail: the list (request, result, report), and one run with
the state of each phase (:class:`l9.extract_progress.RunProgress` over the run's records, as
``l9 extract`` follows it on the bus), the generated folder (the generator's file list, each
file checked on this machine's disk and readable), and the evidence report: the auditor's
file rendered, and verified against the trail as ``l9 report verify`` does
(:func:`agents.auditor.report.verify_report_text`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agents.auditor.report import Report, ReportCheck, ReportFormatError, verify_report_text
from agents.extraction import (
    EnforcementCompleted,
    ExtractRequest,
    GeneratedFile,
    GenerationCompleted,
    ReportReady,
    RunCompleted,
    TestsValidated,
    Verified,
)
from envelope import EnvelopeError, PacketEnvelope, Payload, registry
from governance import EscalationRequested, EscalationResolved
from l9.extract_progress import RunProgress
from memory.audit import AuditRecorder, AuditRecordError, EntryFilter, StoredEntry

from ..backend import Backend, Unavailable
from ..web import fragment, live, live_page, page
from .trail import heads_of, history

#: Runs the list shows.
RUNS = 50
#: The largest generated file shown in the page.
MAX_FILE_BYTES = 256 * 1024


@dataclass
class RunRow:
    run: str
    file: str
    requester: str
    started: float
    completed: RunCompleted | None = None
    ready: ReportReady | None = None


def _payload(entry: StoredEntry) -> tuple[PacketEnvelope, Payload] | None:
    """The entry's envelope and payload (None: redacted, or of a type this console cannot read)."""
    try:
        envelope = entry.envelope()
        return envelope, registry.load(envelope)
    except (AuditRecordError, EnvelopeError, ValidationError, KeyError):
        return None


async def run_rows(store: AuditRecorder, n: int = RUNS) -> list[RunRow]:
    """The newest ``n`` runs (extraction requests in the trail), each with its end and report."""
    heads = await heads_of(store)
    rows: dict[str, RunRow] = {}
    for entry in await history(store, heads, EntryFilter(type_glob="l9.extract.request.v1"), n):
        decoded = _payload(entry)
        if decoded is not None and isinstance(decoded[1], ExtractRequest):
            request = decoded[1]
            started = entry.envelope_time.timestamp()
            rows[entry.correlation_id] = RunRow(
                entry.correlation_id, request.file, request.requester, started
            )
    for glob in ("l9.run.completed.v1", "l9.report.ready.v1"):
        for entry in await history(store, heads, EntryFilter(type_glob=glob), 4 * n):
            row = rows.get(entry.correlation_id)
            decoded = _payload(entry) if row is not None else None
            if row is None or decoded is None:
                continue
            if isinstance(decoded[1], RunCompleted) and row.completed is None:
                row.completed = decoded[1]
            elif isinstance(decoded[1], ReportReady) and row.ready is None:
                row.ready = decoded[1]
    return list(rows.values())


@dataclass
class RunView:
    """One run as its page shows it."""

    run: str
    progress: RunProgress
    request: ExtractRequest | None = None
    files: tuple[GeneratedFile, ...] = ()
    tests: TestsValidated | None = None
    verified: Verified | None = None
    enforced: EnforcementCompleted | None = None
    escalations: list[EscalationRequested] = field(default_factory=list)
    answers: list[EscalationResolved] = field(default_factory=list)
    started: float | None = None
    last: float | None = None
    records: int = 0

    @property
    def status(self) -> str:
        p = self.progress
        if p.completed is None:
            return "running"
        return p.completed.result

    def seconds(self, phase: str) -> float | None:
        return self.progress.phases[phase].seconds(self.last or time.time())

    def on_disk(self) -> bool | None:
        folder = self.progress.folder
        return None if folder is None else Path(folder).is_dir()


async def run_view(store: AuditRecorder, run: str) -> RunView:
    """Every record of ``run`` applied to its progress, in the order they were sent."""
    entries = await store.entries_for_correlation(run)
    if not entries:
        raise HTTPException(404, f"the audit trail holds no record of run {run}")
    # by envelope time, as ``l9 extract`` applies them (the trail's commit order interleaves
    # streams), on the envelopes' clock from the first one on
    ordered = sorted(entries, key=lambda e: (e.envelope_time, e.seq))
    progress = RunProgress(run, last_activity=ordered[0].envelope_time.timestamp())
    view = RunView(run, progress, records=len(entries))
    for entry in ordered:
        decoded = _payload(entry)
        if decoded is None:
            continue
        envelope, payload = decoded
        at = envelope.time.timestamp()
        view.started, view.last = view.started or at, at
        view.progress.apply(envelope, payload, now=at)
        _keep(view, payload)
    return view


def _keep(view: RunView, payload: Payload) -> None:
    """What the page shows beyond the phases: the request, files, test figures, escalations."""
    if isinstance(payload, ExtractRequest):
        view.request = payload
    elif isinstance(payload, GenerationCompleted):
        view.files = payload.files
    elif isinstance(payload, TestsValidated):
        view.tests = payload
    elif isinstance(payload, Verified):
        view.verified = payload
    elif isinstance(payload, EnforcementCompleted):
        view.enforced = payload
    elif isinstance(payload, EscalationRequested):
        view.escalations.append(payload)
    elif isinstance(payload, EscalationResolved):
        view.answers.append(payload)


async def _store(backend: Backend) -> AuditRecorder:
    try:
        return await backend.trail()
    except Unavailable as exc:
        raise HTTPException(503, str(exc)) from None


# -- the list ------------------------------------------------------------------------------------
def _list_renderer(request: Request) -> Any:
    backend: Backend = request.app.state.backend

    async def render() -> str:
        rows = await run_rows(await backend.trail())
        return fragment("_runs.html", rows=rows)

    return render


async def runs_page(request: Request) -> Response:
    return await live_page(request, "runs.html", _list_renderer(request), "/runs/events")


async def runs_events(request: Request) -> Response:
    return live(request, _list_renderer(request), "update")


# -- one run -------------------------------------------------------------------------------------
def _run_renderer(request: Request, run: str) -> Any:
    backend: Backend = request.app.state.backend

    async def render() -> str:
        view = await run_view(await backend.trail(), run)
        return fragment("_run.html", view=view, report=_report_of(view))

    return render


def _report_of(view: RunView) -> dict[str, Any] | None:
    """Where the report is and whether this machine has it."""
    ready = view.progress.ready
    if ready is None:
        return None
    md = Path(ready.path)
    return {"ready": ready, "md": md, "here": md.is_file(), "json": md.with_suffix(".json")}


async def run_page(request: Request) -> Response:
    run = request.path_params["run"]
    store = await _store(request.app.state.backend)
    await run_view(store, run)  # 404 for an unknown run
    events = f"/runs/{_path(run)}/events"
    return await live_page(request, "run.html", _run_renderer(request, run), events, run=run, nav="runs")


async def run_events(request: Request) -> Response:
    return live(request, _run_renderer(request, request.path_params["run"]), "update")


def _path(run: str) -> str:
    return quote(run, safe="")


async def file_page(request: Request) -> Response:
    """One generated file of the run (only a file the generator listed, read from its folder)."""
    run, wanted = request.path_params["run"], request.query_params.get("path", "")
    view = await run_view(await _store(request.app.state.backend), run)
    listed = {f.path: f for f in view.files}
    if wanted not in listed or view.progress.folder is None:
        raise HTTPException(404, f"run {run} generated no file {wanted!r}")
    folder = await anyio.Path(view.progress.folder).resolve()
    target = await (folder / wanted).resolve()
    if not target.is_relative_to(folder):
        raise HTTPException(404, f"run {run} generated no file {wanted!r}")
    try:
        data = await target.read_bytes()
    except OSError as exc:
        raise HTTPException(404, f"{target} is not readable on this machine: {exc.strerror or exc}") from None
    expected = listed[wanted]
    matches = hashlib.sha256(data).hexdigest() == expected.sha256
    text = data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
    return page(
        request,
        "file.html",
        nav="runs",
        run=run,
        file=expected,
        path=target,
        text=text,
        matches=matches,
        cut=len(data) > MAX_FILE_BYTES,
    )


async def report_page(request: Request) -> Response:
    """The run's evidence report, rendered, with what ``l9 report verify`` says of its file."""
    run = request.path_params["run"]
    backend: Backend = request.app.state.backend
    store = await _store(backend)
    view = await run_view(store, run)
    where = _report_of(view)
    if where is None:
        raise HTTPException(404, f"run {run} has no evidence report yet")
    if not where["here"]:
        raise HTTPException(
            404,
            f"the report {where['md']} is not on this machine; `l9 report {run}` renders it from the trail",
        )
    try:
        report = Report.model_validate_json(await anyio.Path(where["json"]).read_text(encoding="utf-8"))
    except (OSError, ValidationError) as exc:
        raise HTTPException(500, f"{where['json']}: not an evidence report: {exc}") from None
    check, problem = await _verify(backend, store, where["md"])
    return page(
        request, "report.html", nav="runs", run=run, report=report, where=where, check=check, problem=problem
    )


async def _verify(backend: Backend, store: AuditRecorder, md: Path) -> tuple[ReportCheck | None, str | None]:
    try:
        trusted = backend.settings.audit_trusted()
    except ValueError as exc:
        return None, f"cannot load the trusted audit keys: {exc}"
    try:
        text = await anyio.Path(md).read_text(encoding="utf-8")
        return await verify_report_text(store, text, trusted), None
    except ReportFormatError as exc:
        return None, f"{md}: not an evidence report: {exc}"
    except OSError as exc:
        return None, f"{md}: cannot read it: {exc.strerror or exc}"


routes = [
    Route("/runs", runs_page),
    Route("/runs/events", runs_events),
    Route("/runs/{run}", run_page),
    Route("/runs/{run}/events", run_events),
    Route("/runs/{run}/file", file_page),
    Route("/runs/{run}/report", report_page),
]
