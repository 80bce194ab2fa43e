"""``l9 agent run NAME``: one agent in this process until SIGTERM; with ``--reload``, in a child
process restarted when its code changes (:mod:`l9.reload`)."""

from __future__ import annotations

from typing import Annotated

import typer

from agents.runner import load_agent
from governance import PolicyFileError
from l9.cli.common import fail, load_settings, run
from l9.devstack import StackError
from l9.settings import Settings
from l9.telemetry import TelemetryConfigError, tracing

agent_app = typer.Typer(name="agent", no_args_is_help=True, help="Agent processes.")


@agent_app.command("run")
def agent_run(
    name: Annotated[str, typer.Argument(help="a built-in agent name or module:Class")],
    concurrency: Annotated[int | None, typer.Option(min=1, help="handlers running at once")] = None,
    instance: Annotated[str | None, typer.Option(help="stable instance id (default: lowest free)")] = None,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload",
            help="run it in a child process, restarted when a Python file of its module's folder "
            "(of the project, for a built-in agent) changes",
        ),
    ] = False,
) -> None:
    """Run one agent in this process until SIGTERM (traced when OTEL_TRACES_EXPORTER says so)."""
    settings = load_settings()
    if reload:
        _reloading(name, concurrency, instance)
        return
    try:
        with tracing(name.rpartition(":")[2].lower() or name, database=name == "auditor"):
            _run(name, settings, concurrency, instance)
    except TelemetryConfigError as exc:
        raise fail(str(exc), 2) from None


def _run(name: str, settings: Settings, concurrency: int | None, instance: str | None) -> None:
    if name == "lineage":
        from l9.start import run_lineage  # late: start-up speed (~25 ms)

        try:
            run(lambda: run_lineage(settings, instance=instance))
        except StackError as exc:
            raise fail(str(exc)) from None
        return
    if name == "auditor":
        from l9.start import run_auditor  # late: start-up speed (~70 ms)

        try:
            run(lambda: run_auditor(settings, instance=instance))
        except StackError as exc:
            raise fail(str(exc)) from None
        return
    from l9.start import run_agent

    try:
        agent_cls = load_agent(name)
    except (ValueError, ImportError) as exc:
        raise fail(str(exc), 2) from None
    except SyntaxError as exc:  # the agent's own module: where, not a traceback
        raise fail(f"{name}: {exc.filename}:{exc.lineno}: {exc.msg}", 2) from None
    try:
        run(lambda: run_agent(agent_cls, settings, concurrency=concurrency, instance=instance))
    except PolicyFileError as exc:  # L9_POLICY_FILE unusable: at start, before any envelope is read
        raise fail(str(exc), 2) from None
    except StackError as exc:
        raise fail(str(exc)) from None


def _reloading(name: str, concurrency: int | None, instance: str | None) -> None:
    from l9.children import STOP_GRACE_S
    from l9.reload import Reloader, agent_command, watched_paths  # late: start-up speed (watchfiles)

    try:
        paths = watched_paths(name)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    code = run(Reloader(agent_command(name, concurrency, instance), paths, STOP_GRACE_S).run)
    if code:
        raise typer.Exit(code)
