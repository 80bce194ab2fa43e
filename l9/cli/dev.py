"""``l9 dev up|down|status``: the embedded development stack (Redis + FalkorDB, PostgreSQL)."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from l9.cli.common import fail, load_settings
from l9.devstack import EmbeddedStack, StackError

dev_app = typer.Typer(name="dev", no_args_is_help=True, help="The embedded development stack.")
console = Console()


@dev_app.command("up")
def dev_up() -> None:
    """Start (or reuse) the embedded Redis + FalkorDB and PostgreSQL."""
    settings = load_settings()
    try:
        endpoints = EmbeddedStack(settings.home_dir).up()
    except StackError as exc:
        raise fail(str(exc)) from None
    console.print(f"REDIS_URL={endpoints.redis_url}\nDATABASE_URL={endpoints.database_url}", soft_wrap=True)


@dev_app.command("down")
def dev_down() -> None:
    """Stop the embedded servers (data is kept under L9_HOME)."""
    settings = load_settings()
    stopped = EmbeddedStack(settings.home_dir).down()
    console.print("stopped" if stopped else "nothing was running")


@dev_app.command("status")
def dev_status() -> None:
    """Whether the embedded servers run, their pids, urls and data folders."""
    settings = load_settings()
    console.print_json(json.dumps(EmbeddedStack(settings.home_dir).status(), default=str))
