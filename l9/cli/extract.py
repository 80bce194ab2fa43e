"""``l9 extract FILE``: run the extraction pipeline on a schema collection and follow it.

1. the file is checked here first (``agents.extraction.load_file``): every schema error
   is printed and nothing is published (exit 2), unless ``--no-check`` sends it as it is
   (the planner then rejects it, and the run gets an evidence report);
2. an ``l9.extract.request.v1`` is published (the text inline, ``out_dir`` = ``--out`` or
   ``L9_EXTRACTIONS_DIR`` made absolute, the requester) as the root of a new run;
3. the run's envelopes are followed on the phase streams (:mod:`l9.extract_progress`):
   a live table per phase and per generated agent, or JSON lines with ``--json``;
4. when the auditor's ``l9.report.ready.v1`` arrives: the extraction folder and the
   report path are printed. Exit 0 if the run passed, 1 if it failed, 3 if nothing
   happened for ``--timeout`` seconds (the phase it is stuck at and the agents with no
   live consumer are named). ``--no-wait`` prints the run id after publishing, exit 0.

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

from agents.extraction import SchemaErrors
from governance import PolicyFileError
from l9.cli.common import load_settings, quiet, run
from l9.extract_run import (
    BAD_INPUT,
    DEFAULT_TIMEOUT_S,
    FAILED,
    PASSED,
    STUCK,
    Options,
    Outcome,
    build_request,
    check_file,
    default_requester,
    extract,
    json_line,
)
from l9.telemetry import TelemetryConfigError, tracing

commands = typer.Typer()


def _finish(outcome: Outcome, options: Options, console: Console, err: Console) -> None:
    """Print the result (a JSON line with ``--json``) and exit with its code."""
    p = outcome.progress
    completed, ready = p.completed, p.ready
    result = {PASSED: "passed", FAILED: "failed", STUCK: "stuck"}[outcome.code]
    reason = outcome.stuck or (completed.reason if completed else "")
    if options.as_json:
        phase = completed.phase if completed else p.current()
        report = ready.path if ready else None
        json_line(
            {"event": "result", "run": p.run, "result": result, "phase": phase, "reason": reason}
            | {"folder": p.folder, "report": report}
        )
        raise typer.Exit(outcome.code)
    if outcome.code == STUCK:
        err.print(f"[red]error:[/red] run {p.run}: {reason}")
        raise typer.Exit(STUCK)
    assert completed is not None and ready is not None
    colour = "green" if outcome.code == PASSED else "red"
    at = "" if outcome.code == PASSED else f" at phase {completed.phase}"
    console.print(f"run {p.run}: [{colour}]{result}[/{colour}]{at}{': ' + reason if reason else ''}")
    console.print(f"extraction folder: {p.folder or '(none: the run ended before generation)'}")
    console.print(f"evidence report: {ready.path} (check it: l9 report verify {ready.path})")
    raise typer.Exit(outcome.code)


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
    text = _checked_text(options, err)
    try:
        request = build_request(options, settings, text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        err.print(f"[red]error:[/red] {options.file}: cannot be sent: {where}: {first['msg']}")
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


def _checked_text(options: Options, err: Console) -> str:
    """FILE's text, checked unless ``--no-check``; exit 2 listing every error otherwise."""
    try:
        if options.check:
            return check_file(options.file)
        return options.file.read_bytes().decode("utf-8")
    except SchemaErrors as exc:
        print(f"{options.file}: {exc}", file=sys.stderr)
        print("nothing was published (l9 extract --no-check sends it to the planner anyway)", file=sys.stderr)
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/red] cannot read {options.file}: {exc}")
    raise typer.Exit(BAD_INPUT)
