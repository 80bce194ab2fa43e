"""``l9 tail`` and ``l9 audit verify``: reading and checking the audit trail in PostgreSQL.

``l9 tail`` prints the newest entries (or every one since a time), then with
``--follow`` each new one as it commits, read as :mod:`l9.tail` reads (by ``seq`` cursor per
chain, so nothing is skipped or printed twice).

The ``l9 audit`` group also holds the proof commands of :mod:`l9.cli.proofs` (``prove``,
``consistency``, ``verify-proof``, ``keys``), registered at the end of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console
from rich.text import Text

from l9.cli import proofs
from l9.cli.common import duration_option, fail, load_settings, with_trail
from l9.tail import Cursors, entries_between, filtered_for, follow, last_entries, short_id
from l9.trail import quiet_reconnect_warnings
from memory.audit import (
    AuditRecorder,
    CheckpointError,
    EntryFilter,
    StoredEntry,
    VerifyReport,
    commit_order,
    read_checkpoint,
)

log = structlog.get_logger(__name__)

commands = typer.Typer()
audit_app = typer.Typer(name="audit", no_args_is_help=True, help="The audit trail in PostgreSQL.")

# -- printing entries ----------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def entry_json(entry: StoredEntry) -> dict[str, Any]:
    """One ``--json`` line of ``l9 tail``."""
    return {
        "seq": entry.seq,
        "envelope_id": entry.envelope_id,
        "type": entry.type,
        "source": entry.source,
        "correlation_id": entry.correlation_id,
        "causation_id": entry.causation_id,
        "envelope_time": _utc(entry.envelope_time).isoformat(),
        "recorded_at": _utc(entry.recorded_at).isoformat(),
        "stream": entry.stream,
        "entry_id": entry.entry_id,
        "chain_hash": entry.chain_hash.hex(),
        "summary": entry.summary(),
    }


def entry_line(entry: StoredEntry, seq_width: int = 6) -> Text:
    """One human line: seq, envelope time (UTC, ms), type, source, short correlation id, summary."""
    moment = _utc(entry.envelope_time)
    line = Text(no_wrap=True)
    line.append(f"{entry.seq:>{seq_width}}", style="bold")
    line.append(f"  {moment:%Y-%m-%d %H:%M:%S}.{moment.microsecond // 1000:03d}Z", style="dim")
    line.append(f"  {entry.type}", style="cyan")
    line.append(f"  {entry.source}", style="magenta")
    line.append(f"  {short_id(entry.correlation_id)}", style="yellow")
    line.append(f"  {entry.summary()}")
    return line


class _ReaderGone(Exception):
    """Whoever read our stdout went away (``l9 tail | head``)."""


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class _Console(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence_stdout()
        raise _ReaderGone


class EntryPrinter:
    """Writes entries to stdout, one line each, flushed at once."""

    def __init__(self, *, as_json: bool, seq_width: int = 6) -> None:
        self.as_json = as_json
        self.seq_width = seq_width
        self.console = _Console(highlight=False, soft_wrap=True)

    def __call__(self, entry: StoredEntry) -> None:
        if self.as_json:
            try:
                sys.stdout.write(json.dumps(entry_json(entry)) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                _silence_stdout()
                raise _ReaderGone from None
        else:
            self.console.print(entry_line(entry, self.seq_width))


async def _until_signalled(main: Awaitable[None]) -> None:
    """Run ``main`` until it ends or SIGINT/SIGTERM arrives (then it is cancelled: a clean stop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.ensure_future(main)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopper):
            task.cancel()
        await asyncio.gather(work, stopper, return_exceptions=True)
        for sig in signals:
            loop.remove_signal_handler(sig)
    if work.done() and not work.cancelled() and (exc := work.exception()) is not None:
        raise exc


# -- the commands ------------------------------------------------------------------------------------


async def run_tail(
    store: AuditRecorder, *, lines: int, filters: EntryFilter, follow_: bool, as_json: bool
) -> None:
    """History up to the heads (the last ``lines``, or all since ``filters.since``), then new
    entries. With several chains, each chain is read by its own cursor and what they give is
    printed in :func:`commit_order`."""
    layout = store.layout
    if layout.chains == 1:
        heads: Cursors = {None: (await store.head()).seq}
    else:
        heads = {h.chain: h.seq(layout) for h in await store.heads()}
    emit = EntryPrinter(as_json=as_json, seq_width=max(6, len(str(max(heads.values())))))
    history: list[StoredEntry] = []
    for chain, head in heads.items():
        chain_filters = filtered_for(filters, chain)
        if filters.since is not None:
            await entries_between(store, 0, head, chain_filters, history.append)
        else:
            history += await last_entries(store, lines, chain_filters, head)
    if len(heads) > 1:
        history.sort(key=commit_order)
        if filters.since is None:
            history = history[-lines:] if lines else []
    for entry in history:
        emit(entry)
    if follow_:
        await follow(store, heads, filters, emit)


@commands.command("tail")
def tail(
    lines: Annotated[
        int, typer.Option("-n", "--lines", min=0, help="how many of the newest matching entries to show")
    ] = 20,
    follow_: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new entries as they commit")
    ] = False,
    type_glob: Annotated[
        str | None, typer.Option("--type", metavar="GLOB", help="envelope types, e.g. 'l9.plan.*'")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(metavar="AGENT", help="an agent name (each instance) or a full agent:// source URI"),
    ] = None,
    correlation: Annotated[str | None, typer.Option(metavar="ID", help="one run's correlation id")] = None,
    since: Annotated[
        timedelta | None,
        typer.Option(
            parser=duration_option,
            metavar="DURATION",
            help="every matching entry recorded in the last DURATION (30s, 10m, 2h, 1d, 1h30m) instead of -n",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The audit trail: the newest entries, then with --follow each new one as it commits."""
    settings = load_settings()
    filters = EntryFilter(
        type_glob=type_glob,
        source=source,
        correlation_id=correlation,
        since=datetime.now(UTC) - since if since is not None else None,
    )
    # The pool's own reconnect warnings carry tracebacks; follow() reports an outage itself.
    quiet_reconnect_warnings()

    async def work(store: AuditRecorder) -> None:
        tailing = run_tail(store, lines=lines, filters=filters, follow_=follow_, as_json=as_json)
        with contextlib.suppress(_ReaderGone):
            await _until_signalled(tailing)

    with_trail(settings, work)


def report_json(report: VerifyReport) -> dict[str, Any]:
    problems = [{"seq": p.seq, "damage": str(p.kind), "detail": p.detail} for p in report.problems]
    return {
        "ok": report.ok,
        "first_bad_seq": report.first.seq if report.first else None,
        "damage": str(report.first.kind) if report.first else None,
        "problems": problems,
        "entries_checked": report.entries_checked,
        "last_seq": report.last_seq,
        "head_seq": report.head_seq,
        "chain_hash": report.chain_hash.hex(),
        "anchors_matched": report.anchors_matched,
        "redacted": report.redacted,
        "started_from_checkpoint": report.started_from,
        "signatures_checked": report.signatures_checked,
        "seconds": round(report.seconds, 6),
        "entries_per_s": round(report.entries_per_s),
        "chains": [c.to_json() for c in report.chains],
    }


def report_lines(report: VerifyReport) -> list[str]:
    """What ``l9 audit verify`` prints: the first bad seq and its damage first."""
    totals = (
        f"entries checked: {report.entries_checked}, head seq: {report.head_seq}, "
        f"{report.entries_per_s:,.0f} entries/s, checkpoints/anchors matched: {report.anchors_matched}, "
        f"signatures {'checked' if report.signatures_checked else 'NOT checked'}"
    )
    if report.first is None:
        return [report.summary(), totals]
    first = report.first
    return [
        f"first bad seq: {first.seq} ({first.kind})",
        f"trail damaged: {len(report.problems)} problem(s); {totals}",
        *(f"  {problem}" for problem in report.problems),
    ]


@audit_app.command("verify")
def audit_verify(
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="a signed checkpoint file to start the walk from"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Recompute the hash chain and check the signed checkpoints; exit 1 naming the first bad seq."""
    settings = load_settings()
    if from_checkpoint is not None:
        try:
            read_checkpoint(from_checkpoint)
        except CheckpointError as exc:
            raise fail(str(exc), 2) from None
    try:
        trusted = settings.audit_trusted()
    except ValueError as exc:
        raise fail(f"cannot load the trusted checkpoint keys: {exc}", 2) from None

    async def work(store: AuditRecorder) -> VerifyReport | CheckpointError:
        try:
            return await store.verify(
                from_checkpoint=from_checkpoint,
                checkpoint_dir=settings.checkpoint_dir,
                trusted_keys=trusted or None,  # no key at all: signatures cannot be checked
            )
        except CheckpointError as exc:  # a file in the checkpoint directory
            return exc

    report = with_trail(settings, work)
    if isinstance(report, CheckpointError):
        raise fail(str(report), 2)
    if not trusted:
        print(
            "warning: no audit key (L9_AUDIT_KEY_FILE, L9_AUDIT_TRUSTED_KEYS): checkpoint signatures "
            "were not checked",
            file=sys.stderr,
        )
    if as_json:
        print(json.dumps(report_json(report)), flush=True)
    else:
        out = Console(highlight=False, soft_wrap=True)
        for i, line in enumerate(report_lines(report)):
            style = ("green" if report.ok else "bold red") if i == 0 else None
            out.print(Text(line, style=style or ""))
    if not report.ok:
        raise typer.Exit(1)


# -- proofs (l9/cli/proofs.py) -------------------------------------------------------------------------

audit_app.command("prove")(proofs.prove)
audit_app.command("consistency")(proofs.consistency)
audit_app.command("verify-proof")(proofs.verify_proof)
audit_app.command("keys")(proofs.keys)
