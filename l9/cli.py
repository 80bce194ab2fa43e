"""The ``l9`` command."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.text import Text

from bus import ConsumerNameTaken, Keys, connect
from governance import PolicyFileError
from l9.devstack import EmbeddedStack, StackError, resolve_endpoints
from l9.logs import configure_logging
from l9.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, help="L9: an event-driven multi-agent bus.")
dev_app = typer.Typer(no_args_is_help=True, help="The embedded development stack.")
agent_app = typer.Typer(no_args_is_help=True, help="Agent processes.")
app.add_typer(dev_app, name="dev")
app.add_typer(agent_app, name="agent")
console = Console()
T = TypeVar("T")
err = Console(stderr=True)
#: ``l9 trim`` deletes RPC reply streams that every group consumed and that were idle this long.
REPLY_STREAM_IDLE_S = 600.0
AGENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValueError as exc:
        err.print(f"[red]invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    return settings


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: MESSAGE`` on one line (never wrapped, never read as markup); the exit to raise."""
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _run(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async command; an unreachable Redis is a one-line error, not a traceback."""
    try:
        return anyio.run(main)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        url = get_settings().redis_url or "the embedded stack"
        raise _fail(f"cannot reach Redis ({url}): {exc}") from None
    except ConsumerNameTaken as exc:
        raise _fail(str(exc), 2) from None


@dev_app.command("up")
def dev_up() -> None:
    """Start (or reuse) the embedded Redis + FalkorDB and PostgreSQL."""
    settings = _settings()
    try:
        endpoints = EmbeddedStack(settings.home_dir).up()
    except StackError as exc:
        raise _fail(str(exc)) from None
    console.print(f"REDIS_URL={endpoints.redis_url}\nDATABASE_URL={endpoints.database_url}", soft_wrap=True)


@dev_app.command("down")
def dev_down() -> None:
    """Stop the embedded servers (data is kept under L9_HOME)."""
    settings = _settings()
    stopped = EmbeddedStack(settings.home_dir).down()
    console.print("stopped" if stopped else "nothing was running")


@dev_app.command("status")
def dev_status() -> None:
    """Whether the embedded servers run, their pids, urls and data folders."""
    settings = _settings()
    console.print_json(json.dumps(EmbeddedStack(settings.home_dir).status(), default=str))


@agent_app.command("run")
def agent_run(
    name: Annotated[str, typer.Argument(help="a built-in agent name or module:Class")],
    concurrency: Annotated[int | None, typer.Option(min=1, help="handlers running at once")] = None,
    instance: Annotated[str | None, typer.Option(help="stable instance id (default: lowest free)")] = None,
) -> None:
    """Run one agent in this process until SIGTERM."""
    from agents.runner import load_agent, run_agent

    settings = _settings()
    if name == "lineage":
        from agents.lineage.main import run_lineage

        try:
            _run(lambda: run_lineage(settings, instance=instance))
        except StackError as exc:
            raise _fail(str(exc)) from None
        return
    if name == "auditor":
        from agents.auditor.main import run_auditor

        try:
            _run(lambda: run_auditor(settings, instance=instance))
        except StackError as exc:
            raise _fail(str(exc)) from None
        return
    try:
        agent_cls = load_agent(name)
    except (ValueError, ImportError) as exc:
        raise _fail(str(exc), 2) from None
    try:
        _run(lambda: run_agent(agent_cls, settings, concurrency=concurrency, instance=instance))
    except PolicyFileError as exc:  # L9_POLICY_FILE unusable: at start, before any envelope is read
        raise _fail(str(exc), 2) from None
    except StackError as exc:
        raise _fail(str(exc)) from None


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Streams, consumer groups, consumers, lag, pending and dead-letter counts."""
    from l9.status import collect_status, render_status

    settings = _settings()
    endpoints = resolve_endpoints(settings)

    async def snapshot() -> dict[str, object]:
        redis = connect(endpoints.redis_url)
        try:
            return await collect_status(redis, Keys(settings.namespace))
        finally:
            await redis.aclose()

    data = _run(snapshot)
    if as_json:
        print(json.dumps(data))
    else:
        render_status(data, console)


@app.command()
def health(
    agent: Annotated[str, typer.Argument(help="the agent's name (its consumer group), e.g. sympy")],
    minimum: Annotated[int, typer.Option("--min", min=1, help="live consumers required")] = 1,
    instance: Annotated[
        list[str] | None, typer.Option(help="also probe consumer AGENT-INSTANCE (agent run --instance)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a line")] = False,
) -> None:
    """Exit 0 when a consumer of AGENT has a fresh heartbeat, else 1 with the reason (health checks)."""
    from l9.health import health_of

    if not AGENT_NAME.fullmatch(agent):
        raise _fail(f"{agent!r} is not an agent name (letters, digits, '_', '.', '-')", 2)
    settings = _settings()
    result = anyio.run(lambda: health_of(settings, agent, minimum=minimum, instances=instance or ()))
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        (console if result.healthy else err).print(
            result.reason, markup=False, highlight=False, soft_wrap=True
        )
    if not result.healthy:
        raise typer.Exit(1)


@app.command()
def trim(
    max_age: Annotated[
        float | None, typer.Option(help="also keep entries younger than this many seconds")
    ] = None,
) -> None:
    """Trim every stream to what all its consumer groups have acknowledged."""
    from bus import drop_finished_reply_streams, trim_acknowledged
    from l9.status import stream_names

    settings = _settings()
    endpoints = resolve_endpoints(settings)
    keys = Keys(settings.namespace)

    async def run() -> tuple[dict[str, int], list[str]]:
        redis = connect(endpoints.redis_url)
        try:
            dropped = await drop_finished_reply_streams(redis, keys, idle_s=REPLY_STREAM_IDLE_S)
            removed = {
                name: await trim_acknowledged(redis, keys.stream(name), max_age_s=max_age)
                for name in await stream_names(redis, keys)
                if await redis.exists(keys.stream(name))
            }
            return removed, dropped
        finally:
            await redis.aclose()

    removed, dropped = _run(run)
    for name, n in removed.items():
        console.print(f"{name}: {n} acknowledged entries removed")
    if dropped:
        console.print(f"{len(dropped)} finished reply streams (idle {REPLY_STREAM_IDLE_S:g}s) deleted")


@app.command()
def asyncapi(
    out: Annotated[Path | None, typer.Option(help="write the document here (default: stdout)")] = None,
) -> None:
    """Write the AsyncAPI 3.0 document of every stream and message type (JSON)."""
    from l9.asyncapi import build_document, load_payload_modules

    settings = _settings()
    load_payload_modules()
    text = json.dumps(build_document(keys=Keys(settings.namespace)), indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"AsyncAPI {out}")


def main() -> None:
    app()


from l9.cli_audit import register as register_audit_commands  # noqa: E402 (it imports _settings lazily)

register_audit_commands(app)


from l9.cli_report import report_app  # noqa: E402 (it imports from here lazily)

app.add_typer(report_app, name="report")
import l9.cli_governance  # noqa: E402, F401 (adds l9 acl and l9 governance)
from l9 import cli_graph as _cli_graph  # noqa: E402, F401 (adds l9 graph)
from l9 import cli_ops as _cli_ops  # noqa: E402, F401 (adds l9 dead and l9 deploy)
from l9 import cli_sympy as _cli_sympy  # noqa: E402, F401 (adds l9 sympy)
from l9.cli_demo import demo_app  # noqa: E402 (it imports from here lazily)
from l9.cli_extract import register as register_extract  # noqa: E402

app.add_typer(demo_app, name="demo")
register_extract(app)
