"""``l9 report RUN_ID [--format md|json] [--out FILE]`` and ``l9 report verify FILE``.

A typer group whose first argument, unless it is ``verify`` (or a help option),
is the run id of the default command: the group routes it there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from l9.cli.common import fail, load_settings, with_trail

#: The hidden command ``l9 report RUN_ID`` runs.
DEFAULT_COMMAND = "build"


class _RunIdGroup(TyperGroup):
    """Routes ``l9 report RUN_ID ...`` to the default command; ``verify`` stays a command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        visible = {name for name, cmd in self.commands.items() if not cmd.hidden}
        if args and args[0] not in visible and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        formatter.write_usage(ctx.command_path, "RUN_ID [--format md|json] [--out FILE] | verify FILE")


class _BuildCommand(TyperCommand):
    """The default command, its usage spelled as it is typed (without its hidden name)."""

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        path = ctx.parent.command_path if ctx.parent is not None else ctx.command_path
        formatter.write_usage(path, "RUN_ID [--format md|json] [--out FILE]")


report_app = typer.Typer(
    name="report",
    cls=_RunIdGroup,
    no_args_is_help=True,
    help="Evidence reports: render the signed report of a run from the audit trail, or verify one.",
)


@report_app.command(DEFAULT_COMMAND, hidden=True, cls=_BuildCommand)
def build(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="the run (correlation id)")],
    fmt: Annotated[str, typer.Option("--format", help="md or json")] = "md",
    out: Annotated[Path | None, typer.Option("--out", help="write the report here (default: stdout)")] = None,
) -> None:
    """Render the signed evidence report of RUN_ID from the audit trail."""
    # late: start-up speed (~60 ms: jinja2 and the report templates)
    from agents.auditor.report import FORMATS, NoRecordsError, render, report_from_trail

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}", 2)
    settings = load_settings()
    try:
        key = settings.audit_signing_key()
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    try:
        report = with_trail(settings, lambda store: report_from_trail(store, run_id, key))
    except NoRecordsError:
        raise fail(f"no audit records for run {run_id}") from None
    text = render(report, "md" if fmt == "md" else "json")
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc}") from None
    d = report.declaration
    print(
        f"report of run {run_id} written to {out}: outcome {report.outcome.status}, "
        f"{d.entries} records up to seq {d.head_seq}, checkpoint #{d.checkpoint_id}, digest {d.digest}"
    )


@report_app.command("verify")
def verify(file: Annotated[Path, typer.Argument(help="a report written by l9 report (md or json)")]) -> None:
    """Check a report against the trail: signature, chain head, checkpoint and content."""
    # late: start-up speed (~60 ms: jinja2 and the report templates)
    from agents.auditor.report import ReportFormatError, parse_report, verify_parsed

    try:
        text = file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"{file}: cannot read the report: {exc}", 2) from None
    try:
        parsed = parse_report(text)
    except ReportFormatError as exc:
        raise fail(f"{file}: not an evidence report: {exc}", 2) from None
    settings = load_settings()
    try:
        trusted = settings.audit_trusted()
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    check = with_trail(settings, lambda store: verify_parsed(store, parsed, trusted))
    stamp = check.stamp
    if check.ok:
        print(
            f"OK: {file} ({check.fmt}) is the signed report of run {stamp.run_id}, matching the trail "
            f"up to seq {stamp.head_seq} (checkpoint #{stamp.checkpoint_id}, key {stamp.key_id})"
        )
        return
    for problem in check.problems:
        print(f"FAILED: {problem}")
    raise fail(f"{file} does not verify against the trail ({len(check.problems)} problem(s))")
