"""``l9 demo`` (the extraction pipeline, ``make demo``) and ``l9 demo bus`` (agents exchanging
envelopes). Both start the embedded stack when no servers are configured and stop it
afterwards if they started it."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from agents.extraction import SchemaErrors
from l9.cli.common import fail, load_settings, quiet, run
from l9.devstack import EmbeddedStack, StackEndpoints, StackError, resolve_endpoints
from l9.settings import Settings
from l9.telemetry import TelemetryConfigError, tracing

if TYPE_CHECKING:
    from l9.demo_extraction import ExtractionDemo

T = TypeVar("T")


class Signing(StrEnum):
    hmac = "hmac"
    ed25519 = "ed25519"


SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tensoraios_ecosystem.md"
demo_app = typer.Typer(
    name="demo",
    invoke_without_command=True,
    help="The extraction pipeline end to end (l9 demo), or agents exchanging envelopes (l9 demo bus).",
)
console = Console()


def _with_stack(settings: Settings, keep_stack: bool, work: Callable[[StackEndpoints], T]) -> T:
    """``work`` on the configured servers or the embedded stack (stopped afterwards if started here)."""
    stack = EmbeddedStack(settings.home_dir)
    embedded = not (settings.redis_url and settings.database_url) and not stack.status()["running"]
    try:
        endpoints = resolve_endpoints(settings)
        where = (
            f"the embedded stack in {stack.home}" if embedded else "the servers of REDIS_URL / DATABASE_URL"
        )
        console.print(f"using {where}")
        return work(endpoints)
    except StackError as exc:
        raise fail(str(exc)) from None
    finally:
        if embedded and not keep_stack:
            stack.down()
            console.print("embedded stack stopped (l9 dev up starts it again; data is kept)")


@demo_app.callback()
def extraction(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option(help="the schema collection to extract")] = SAMPLE,
    timeout: Annotated[
        float, typer.Option(min=1, help="give up after S seconds with nothing happening")
    ] = 300,
    keep_stack: Annotated[
        bool, typer.Option(help="leave the embedded stack running (a stack already up is always left)")
    ] = False,
    signing: Annotated[
        Signing,
        typer.Option(help="hmac: the shared development key; ed25519: one private key per agent process"),
    ] = Signing.hmac,
) -> None:
    """Start the stack and every agent as a process, extract FILE, verify the trail and the report."""
    if ctx.invoked_subcommand is not None:
        return
    from l9.demo_extraction import DemoError, run_extraction_demo  # late: start-up speed (~110 ms)

    settings = load_settings()
    quiet(settings.log_level)  # before anything logs: structlog caches a logger's level on first use
    try:
        with tracing("demo"):  # the run's root span when OTEL_TRACES_EXPORTER says so (agents inherit it)
            result = _with_stack(
                settings,
                keep_stack,
                lambda endpoints: run(
                    lambda: run_extraction_demo(
                        settings, endpoints, console, file=file, timeout_s=timeout, signing=signing.value
                    )
                ),
            )
    except TelemetryConfigError as exc:
        raise fail(str(exc), 2) from None
    except (DemoError, SchemaErrors, OSError) as exc:
        raise fail(str(exc)) from None
    _print_result(result)
    if not result.ok:
        raise fail("the demo did not complete as expected")
    console.print("[green]demo passed[/green]")


def _print_result(result: ExtractionDemo) -> None:
    outcome = result.outcome
    if outcome is not None:
        p = outcome.progress
        if outcome.stuck:
            console.print(f"[red]stuck:[/red] {outcome.stuck}")
        ended = p.completed.result if p.completed else "unfinished"
        console.print(f"\nrun {p.run}: {ended}")
        console.print(f"extraction folder: {p.folder or '(none)'}")
        console.print(f"evidence report: {p.ready.path if p.ready else '(none)'}")
    console.print(f"checks (exit codes): {result.checks}\nagent exit codes: {result.exit_codes}")


@demo_app.command("bus")
def bus(
    count: Annotated[int, typer.Option(min=1, max=1_000_000, help="tasks to publish")] = 200,
    squarers: Annotated[int, typer.Option(min=1, max=16, help="squarer processes")] = 2,
    keep_stack: Annotated[
        bool, typer.Option(help="leave the embedded stack running (a stack already up is always left)")
    ] = False,
) -> None:
    """Start the stack, run the squarer and summer agents as processes, exchange envelopes."""
    from l9.demo import run_demo  # late: start-up speed (~80 ms)

    settings = load_settings()
    result = _with_stack(
        settings,
        keep_stack,
        lambda endpoints: run(lambda: run_demo(settings, endpoints, console, count=count, squarers=squarers)),
    )
    console.print(
        f"tasks published: {result.published}, results collected: {result.collected}\n"
        f"sum of squares: {result.total} (expected {result.expected})\n"
        f"handled by: {result.handled_by}\n"
        f"audit trail: {result.audited} envelopes of the run; {result.trail}\n"
        f"evidence report: {result.report} (check it: l9 report verify {result.report})\n"
        f"agent exit codes: {result.exit_codes}"
    )
    if not result.ok:
        raise fail("the demo did not complete as expected")
    console.print("[green]demo passed[/green]")
