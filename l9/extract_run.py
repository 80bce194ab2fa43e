"""Publishing an extraction request and following its run to the evidence report:
what ``l9 extract`` and ``l9 demo`` share (outside :mod:`l9.cli`, which nothing imports).

An ``l9.extract.request.v1`` is published (the text inline, ``out_dir`` = ``--out`` or
``L9_EXTRACTIONS_DIR`` made absolute, the requester) as the root of a new run; the
run's envelopes are followed on the phase streams (:mod:`l9.extract_progress`): a
live table per phase and per generated agent, or JSON lines. The :class:`Outcome` is
PASSED or FAILED once the auditor's ``l9.report.ready.v1`` arrives, STUCK when
nothing happened for the timeout.
"""

from __future__ import annotations

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
from agents.extraction import ExtractRequest, load_collection
from bus import Keys, Publisher, RedisClient, open_client
from envelope import PacketEnvelope, Payload
from governance import load_policy_file
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


def check_file(path: Path) -> str:
    """The collection's text once it loads without a schema error; SchemaErrors, OSError or
    UnicodeDecodeError otherwise."""
    text = path.read_bytes().decode("utf-8")
    load_collection(text, str(path))
    return text


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
    if outcome.code == STUCK:
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
    return Outcome(PASSED if progress.passed else FAILED, progress)


async def _follow_json(watcher: RunWatcher, progress: RunProgress, timeout_s: float) -> Outcome:
    while not progress.finished:
        if time.monotonic() - progress.last_activity > timeout_s:
            return Outcome(STUCK, progress)
        for envelope, payload in await watcher.read(progress.run, block_ms=250):
            phase = progress.apply(envelope, payload)
            json_line(_event(envelope, payload, phase))
    return Outcome(PASSED if progress.passed else FAILED, progress)


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
