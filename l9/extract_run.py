"""Publishing an extraction request and following its run to the evidence report:
what ``l9 extract`` and ``l9 demo`` share (outside :mod:`l9.cli`, which nothing imports).

Before anything is published the file is checked here (:func:`check_file`): it must be
UTF-8 text of at most ``TEXT_MAX`` characters (a binary or oversized file is named with
its line or size, plainly), and :func:`agents.extraction.check.check_collection` runs
every check that needs no agent, with the SymPy worker's own safe parser and limits:
every error is listed at once, each at its file and line.

An ``l9.extract.request.v1`` is published (the text inline, ``out_dir`` = ``--out`` or
``L9_EXTRACTIONS_DIR`` made absolute, the requester) as the root of a new run; the
run's envelopes are followed on the phase streams (:mod:`l9.extract_progress`): a
live table per phase and per generated agent, or JSON lines. The :class:`Outcome` is
PASSED or FAILED once the auditor's ``l9.report.ready.v1`` arrives, STUCK when
nothing happened for the timeout, or at once when an envelope of the run is
dead-lettered (an agent gave up on it: nothing will end the run).
"""

from __future__ import annotations

import difflib
import getpass
import json
import re
import socket
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span, Status, StatusCode
from rich.console import Console
from rich.live import Live
from rich.table import Table

import bus.tracing
from agents.contracts.extraction.payloads import TEXT_MAX
from agents.contracts.sympy.errors import ToolError
from agents.extraction import ExtractRequest, LockedPlan
from agents.extraction.check import FormulaCheck, check_collection
from agents.sympy.grammar import FUNCTIONS
from agents.sympy.parser import ParserLimits, parse
from bus import Keys, Publisher, RedisClient, open_client
from envelope import PacketEnvelope, Payload
from governance import load_policy_file
from l9.dead import DeadLetter
from l9.devstack import resolve_endpoints
from l9.extract_progress import (
    PHASES,
    RunProgress,
    RunWatcher,
    missing_consumers,
    phase_rows,
    run_streams,
    summary_of,
)
from l9.settings import Settings

#: Exit codes: passed, failed, bad input (nothing published), stuck.
PASSED, FAILED, BAD_INPUT, STUCK = 0, 1, 2, 3
DEFAULT_TIMEOUT_S = 300.0
_SOURCE_SAFE = re.compile(r"[^A-Za-z0-9_.\-@#:]")
_STYLE = {"done": "green", "failed": "red", "running": "yellow", "skipped": "dim", "waiting": "dim"}


@dataclass(frozen=True)
class Options:
    file: Path
    out: Path | None
    wait: bool
    as_json: bool
    timeout_s: float
    requester: str
    check: bool


@dataclass
class Outcome:
    code: int
    progress: RunProgress
    stuck: str = ""


def default_requester() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


class InputError(ValueError):
    """The file cannot be a collection at all: unreadable, binary, not UTF-8 or too large."""


def read_text(path: Path) -> str:
    """The file's text; InputError naming the file and, where it can, the line (module docstring)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > 4 * TEXT_MAX:  # more characters than allowed, however it decodes
        limit = f"a schema collection is at most {TEXT_MAX:,} characters"
        raise InputError(f"{path}: {len(data):,} bytes: {limit}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason}): a schema collection is"
            " YAML or Markdown"
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise InputError(f"{path}:{line}: a NUL byte: this is a binary file, not YAML or Markdown")
    if len(text) > TEXT_MAX:
        raise InputError(f"{path}: {len(text):,} characters: a schema collection is at most {TEXT_MAX:,}")
    return text


def formula_check(limits: ParserLimits) -> FormulaCheck:
    """The SymPy worker's safe parser, with its limits, as :func:`check_collection` asks."""

    def check(formula: str) -> str | None:
        try:
            parse(formula, limits)
        except ToolError as exc:
            where = f" at {exc.position}" if exc.position is not None else ""
            hint = _suggest(formula, exc) if exc.rule == "unknown_function" else ""
            return f"{exc.kind}.{exc.rule}{where}: {exc.detail}{hint}"
        except Exception as exc:  # SymPy itself failed on it: so would the worker
            return f"failed: SymPy could not build it: {type(exc).__name__}: {exc}"
        return None

    return check


def _suggest(formula: str, exc: ToolError) -> str:
    """`` (did you mean Max?)`` for an unknown function spelled like a known one."""
    name = exc.detail.split("(", 1)[0].strip()
    known = {n.lower(): n for n in FUNCTIONS}
    close = known.get(name.lower()) or next(iter(difflib.get_close_matches(name, list(FUNCTIONS), 1)), None)
    return f" (did you mean {close}?)" if close and close != name else ""


def checked(path: Path, settings: Settings) -> tuple[str, LockedPlan | None]:
    """The collection's text and its plan, once every local check passes (module docstring);
    InputError or SchemaErrors (every error) otherwise."""
    text = read_text(path)
    limits = settings.sympy_config().tool.parser
    _, plan = check_collection(text, str(path), strict=settings.strict_mode, parse=formula_check(limits))
    return text, plan


def check_file(path: Path, settings: Settings | None = None) -> str:
    """The collection's text once every local check passes (:func:`checked`; the default
    settings when none are given)."""
    return checked(path, settings or Settings())[0]


def build_request(options: Options, settings: Settings, text: str) -> PacketEnvelope:
    """The run's root envelope (a new correlation id: its own id)."""
    out_dir = (options.out or settings.extractions_dir).expanduser().resolve()
    request = ExtractRequest.of_text(text, str(options.file), options.requester, str(out_dir))
    who = _SOURCE_SAFE.sub("_", options.requester)[:100] or "anonymous"
    return PacketEnvelope.new(
        type="l9.extract.request.v1",
        source=f"agent://l9-extract/{who}",
        data=request.model_dump(mode="json"),
        kind="request",
    )


async def extract(options: Options, settings: Settings, request: PacketEnvelope, console: Console) -> Outcome:
    """Publish ``request`` and follow its run to the report (or until it is stuck)."""
    endpoints = resolve_endpoints(settings)
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
    keys = Keys(settings.namespace)
    streams = run_streams(load_policy_file(settings.policy_file))
    watcher = RunWatcher(redis, keys, settings.verifier(), streams)
    try:
        await watcher.mark()
        publisher = Publisher(redis, keys, settings.signer(), replicas=settings.publish_replicas)
        with run_span(request, options) as span:  # the run's trace, when tracing is on (l9.telemetry)
            outcome = await _publish_and_follow(redis, keys, watcher, publisher, request, options, console)
            if span is not None:
                span.set_attribute("l9.exit_code", outcome.code)
                if outcome.code not in (PASSED, FAILED):  # stuck: the run never finished
                    span.set_status(Status(StatusCode.ERROR, f"exit {outcome.code}: the run is stuck"))
            return outcome
    finally:
        watcher.close()
        await redis.aclose()


def run_span(request: PacketEnvelope, options: Options) -> AbstractContextManager[Span | None]:
    """The root span of one extraction run (``extract FILE``) while tracing is on: the
    request's send span is its child, and every agent's spans of the run follow from it."""
    tracer = bus.tracing.tracer()
    if tracer is None:
        return nullcontext()
    return tracer.start_as_current_span(
        f"extract {options.file.name}",
        attributes={
            "l9.run": request.correlation_id,
            "l9.request.id": request.id,
            "l9.file": str(options.file),
            "l9.requester": options.requester,
        },
    )


async def _publish_and_follow(
    redis: RedisClient,
    keys: Keys,
    watcher: RunWatcher,
    publisher: Publisher,
    request: PacketEnvelope,
    options: Options,
    console: Console,
) -> Outcome:
    await publisher.publish(request)
    if not options.wait:
        return Outcome(PASSED, RunProgress(request.correlation_id))
    missing = await missing_consumers(redis, keys)
    if missing and not options.as_json:
        console.print(f"[yellow]warning:[/yellow] no live consumer in: {', '.join(missing)}")
    outcome = await _follow(watcher, request.correlation_id, options, console)
    if outcome.code == STUCK and not outcome.stuck:
        outcome.stuck = _stuck_message(
            outcome.progress, options.timeout_s, await missing_consumers(redis, keys)
        )
    return outcome


async def _follow(watcher: RunWatcher, run: str, options: Options, console: Console) -> Outcome:
    progress = RunProgress(run)
    if options.as_json:
        return await _follow_json(watcher, progress, options.timeout_s)
    with Live(_table(progress), console=console, refresh_per_second=4) as live:
        while not progress.finished:
            if time.monotonic() - progress.last_activity > options.timeout_s:
                return Outcome(STUCK, progress)
            for envelope, payload in await watcher.read(run, block_ms=250):
                progress.apply(envelope, payload)
            live.update(_table(progress))
            if watcher.dead:
                return Outcome(STUCK, progress, dead_message(watcher.dead))
    return Outcome(PASSED if progress.passed else FAILED, progress)


async def _follow_json(watcher: RunWatcher, progress: RunProgress, timeout_s: float) -> Outcome:
    while not progress.finished:
        if time.monotonic() - progress.last_activity > timeout_s:
            return Outcome(STUCK, progress)
        for envelope, payload in await watcher.read(progress.run, block_ms=250):
            phase = progress.apply(envelope, payload)
            json_line(_event(envelope, payload, phase))
        if watcher.dead:
            return Outcome(STUCK, progress, dead_message(watcher.dead))
    return Outcome(PASSED if progress.passed else FAILED, progress)


def dead_message(dead: list[DeadLetter]) -> str:
    """Why a run whose envelope was dead-lettered will never end, and what to do."""
    first = dead[0]
    text = (
        f"the {first.group} gave up on {first.type} (envelope {first.envelope_id}) after"
        f" {first.deliveries} deliveries: {first.reason}: {first.detail}"
    )
    more = f" (and {len(dead) - 1} more dead letter(s) of this run)" if len(dead) > 1 else ""
    return (
        f"{text}{more}; nothing will end this run: see `l9 dead list {first.stream}`, and"
        f" `l9 dead replay {first.stream}` once the cause is fixed"
    )


def _event(envelope: PacketEnvelope, payload: Payload, phase: str) -> dict[str, Any]:
    return {
        "event": "envelope",
        "run": envelope.correlation_id,
        "phase": phase,
        "type": envelope.type,
        "source": envelope.source,
        "id": envelope.id,
        "time": envelope.time.isoformat(),
        "outcome": summary_of(payload),
    }


def json_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    sys.stdout.flush()


def _table(progress: RunProgress) -> Table:
    table = Table(title=f"extraction run {progress.run}", title_justify="left")
    for name in ("phase", "agent", "status", "s", "detail"):
        table.add_column(name, justify="right" if name == "s" else "left", overflow="fold")
    for phase, agent, status, seconds, detail in phase_rows(progress, time.monotonic()):
        style = _STYLE.get(status, "")
        table.add_row(phase, agent, f"[{style}]{status}[/{style}]" if style else status, seconds, detail)
    return table


def _stuck_message(progress: RunProgress, timeout_s: float, missing: list[str]) -> str:
    phase = progress.current()
    group, stream = PHASES[phase]
    text = f"nothing happened for {timeout_s:g} s: the run is stuck at phase {phase} (waiting for {group}"
    text += f" on stream {stream})"
    if missing:
        text += f"; no live consumer in: {', '.join(missing)} (start them with l9 agent run NAME)"
    else:
        text += "; every agent has a live consumer: see l9 status and the agents' logs"
    return text
