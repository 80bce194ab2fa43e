"""``l9 extract FILE``: run the extraction pipeline on a schema collection and follow it.

1. the file is checked here first (:func:`l9.extract_run.checked`: the loader, what the
   generator could not write, every expression through the SymPy worker's safe parser, the
   whole plan, at least one test): every error is printed with its file and line and
   nothing is published (exit 2), unless ``--no-check`` sends it as it is (the planner
   then judges it, and the run gets an evidence report). A file that is not a collection
   at all (unreadable, binary, not UTF-8, too large) is named with one plain line, exit 2;
2. an ``l9.extract.request.v1`` is published (the text inline, ``out_dir`` = ``--out`` or
   ``L9_EXTRACTIONS_DIR`` made absolute, the requester) as the root of a new run;
3. the run's envelopes are followed on the phase streams (:mod:`l9.extract_progress`):
   a live table per phase and per generated agent, or JSON lines with ``--json``;
4. when the auditor's ``l9.report.ready.v1`` arrives: the extraction folder and the
   report path are printed, every entry the plan left out (strict mode off), and for a
   failed run everything that failed, in full (every error of a rejection, every denial,
   failing test and verification problem). Exit 0 if the run passed, 1 if it failed, 3 if
   nothing happened for ``--timeout`` seconds (the phase it is stuck at and the agents with
   no live consumer are named) or, at once, if an agent gave up on an envelope of the run
   (dead-lettered: named, with its reason). ``--no-wait`` prints the run id after
   publishing, exit 0.

Steps 2 to 4 are :mod:`l9.extract_run` (``l9 demo`` runs them too); this module checks
the file, prints the result and chooses the exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from agents.extraction import SchemaErrors
from governance import PolicyFileError
from l9.cli.common import load_settings, quiet, run
from l9.extract_run import (
    BAD_INPUT,
    DEFAULT_TIMEOUT_S,
    FAILED,
    PASSED,
    STUCK,
    InputError,
    Options,
    Outcome,
    build_request,
    checked,
    default_requester,
    extract,
    json_line,
    read_text,
)
from l9.settings import Settings
from l9.telemetry import TelemetryConfigError, tracing

commands = typer.Typer()


def _finish(outcome: Outcome, options: Options, console: Console, err: Console) -> None:
    """Print the result (a JSON line with ``--json``) and exit with its code."""
    p = outcome.progress
    completed, ready = p.completed, p.ready
    result = {PASSED: "passed", FAILED: "failed", STUCK: "stuck"}[outcome.code]
    reason = outcome.stuck or (completed.reason if completed else "")
    left_out = [f"{u.agent} {u.field} '{u.path}': {u.reason}" for u in p.left_out]
    if options.as_json:
        phase = completed.phase if completed else p.current()
        report = ready.path if ready else None
        json_line(
            {"event": "result", "run": p.run, "result": result, "phase": phase, "reason": reason}
            | {"folder": p.folder, "report": report, "problems": p.problems(), "left_out": left_out}
        )
        raise typer.Exit(outcome.code)
    if outcome.code == STUCK:
        err.print(f"[red]error:[/red] run {p.run}: {reason}")
        raise typer.Exit(STUCK)
    assert completed is not None and ready is not None
    colour = "green" if outcome.code == PASSED else "red"
    at = "" if outcome.code == PASSED else f" at phase {completed.phase}"
    console.print(f"run {p.run}: [{colour}]{result}[/{colour}]{at}{': ' + reason if reason else ''}")
    _listed(console, f"what failed ({len(p.problems())})", p.problems())
    _listed(console, f"left out of the plan (strict mode off, {len(left_out)} entries)", left_out)
    console.print(f"extraction folder: {p.folder or '(none: the run ended before generation)'}")
    console.print(f"evidence report: {ready.path} (check it: l9 report verify {ready.path})")
    raise typer.Exit(outcome.code)


def _listed(console: Console, title: str, lines: list[str]) -> None:
    """``title:`` and each line, in full (none: nothing printed)."""
    if lines:
        console.print(f"{title}:", markup=False)
        for line in lines:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


@commands.command("extract")
def extract_command(
    file: Annotated[Path, typer.Argument(help="the schema collection (YAML or Markdown)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="make the extraction folder in DIR (default L9_EXTRACTIONS_DIR)"),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the run id once published and exit")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of the live table")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="give up after S seconds with nothing happening")
    ] = DEFAULT_TIMEOUT_S,
    requester: Annotated[
        str | None, typer.Option(envvar="L9_REQUESTER", help="on whose behalf (default user@host)")
    ] = None,
    no_check: Annotated[
        bool,
        typer.Option("--no-check", help="publish without checking the file here (the planner judges it)"),
    ] = False,
) -> None:
    """Extract FILE: plan, generate, enforce, validate, and the signed evidence report."""
    console, err = Console(), Console(stderr=True)
    options = Options(
        file, out, not no_wait, as_json, timeout, requester or default_requester(), not no_check
    )
    settings = load_settings()
    quiet(settings.log_level)
    text = _checked_text(options, settings, err)
    try:
        request = build_request(options, settings, text)
    except ValidationError as exc:  # a field of the request itself (the requester, the folder)
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        err.print(f"[red]error:[/red] {options.file}: cannot be sent: {where}: {first['msg']}", markup=False)
        raise typer.Exit(BAD_INPUT) from None
    try:
        with tracing("cli"):  # the run's root span, when OTEL_TRACES_EXPORTER says so
            outcome = run(lambda: extract(options, settings, request, console))
    except (PolicyFileError, TelemetryConfigError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(BAD_INPUT) from None
    if not options.wait:
        print(request.correlation_id)
        raise typer.Exit(PASSED)
    _finish(outcome, options, console, err)


def _checked_text(options: Options, settings: Settings, err: Console) -> str:
    """FILE's text, checked unless ``--no-check``; exit 2 listing every error otherwise."""
    try:
        if not options.check:
            return read_text(options.file)
        text, plan = checked(options.file, settings)
    except SchemaErrors as exc:
        print(f"{options.file}: {exc}", file=sys.stderr)
        print("nothing was published (l9 extract --no-check sends it to the planner anyway)", file=sys.stderr)
        raise typer.Exit(BAD_INPUT) from None
    except InputError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(BAD_INPUT) from None
    if plan is not None and plan.unresolved:
        n = len(plan.unresolved)
        print(f"{options.file}: strict mode is off: {n} entries left out of the plan:", file=sys.stderr)
        for u in plan.unresolved:
            print(f"  {u.agent} {u.field} '{u.path}': {u.reason}", file=sys.stderr)
    return text
