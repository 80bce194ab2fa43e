"""``l9 dev up|down|status``: the embedded development stack (Redis + FalkorDB, PostgreSQL),
or with ``up --cluster`` PostgreSQL and a local Redis Cluster (:mod:`l9.devcluster`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from l9.cli.common import fail, load_settings
from l9.devcluster import LocalCluster
from l9.devstack import EmbeddedStack, StackError

dev_app = typer.Typer(name="dev", no_args_is_help=True, help="The embedded development stack.")
console = Console()


@dev_app.command("up")
def dev_up(
    cluster: Annotated[
        bool, typer.Option("--cluster", help="a local Redis Cluster (3 masters, 3 replicas) for Redis")
    ] = False,
) -> None:
    """Start (or reuse) the embedded Redis + FalkorDB and PostgreSQL."""
    settings = load_settings()
    stack = EmbeddedStack(settings.home_dir)
    try:
        if cluster:
            database_url = stack.up_postgres()
            redis_url = LocalCluster(settings.home_dir).up().redis_url
        else:
            endpoints = stack.up()
            redis_url, database_url = endpoints.redis_url, endpoints.database_url
    except StackError as exc:
        raise fail(str(exc)) from None
    console.print(f"REDIS_URL={redis_url}\nDATABASE_URL={database_url}", soft_wrap=True)


@dev_app.command("down")
def dev_down() -> None:
    """Stop the embedded servers and the local cluster (data is kept under L9_HOME)."""
    settings = load_settings()
    stopped = EmbeddedStack(settings.home_dir).down()
    try:
        stopped = LocalCluster(settings.home_dir).down() or stopped
    except StackError as exc:
        raise fail(str(exc)) from None
    console.print("stopped" if stopped else "nothing was running")


@dev_app.command("status")
def dev_status() -> None:
    """Whether the embedded servers (and the local cluster, if any) run: pids, urls, data folders."""
    settings = load_settings()
    status = EmbeddedStack(settings.home_dir).status()
    cluster = LocalCluster(settings.home_dir)
    if cluster.state_path.exists():
        status["cluster"] = cluster.status()
    console.print_json(json.dumps(status, default=str))
