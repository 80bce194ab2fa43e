"""``l9 console``: serve the web console (docs/CONSOLE.md) on loopback, or where told."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console

from l9.cli.common import fail, load_settings, run
from l9.devstack import StackError, resolve_endpoints

# The console itself (starlette, uvicorn, jinja2, its pages) loads when the command runs, so
# ``l9 --help`` stays quick: these three are l9.console.config's, repeated here
# (tests/unit/test_console.py checks that they agree).
DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV = "127.0.0.1", 8089, "L9_CONSOLE_TOKEN"

commands = typer.Typer()
out = Console(highlight=False, soft_wrap=True)


@commands.command("console")
def console(
    host: Annotated[
        str, typer.Option(help="the address to listen on (anything but loopback: see docs/CONSOLE.md)")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=1, max=65_535, help="the port to listen on")] = DEFAULT_PORT,
    token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help=f"the file holding the token writes need (default: L9_HOME/console-token, made if "
            f"missing; {TOKEN_ENV} wins over both)",
        ),
    ] = None,
    anchor_key: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE", help="an anchor's key file (l9 deploy anchor-key): its answers are signed with it"
        ),
    ] = None,
    reads: Annotated[
        str,
        typer.Option(
            help="who reads without signing in: loopback (clients on this machine), signed-in (nobody), open",
        ),
    ] = "loopback",
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="HOST",
            help="a host name the console answers to (as browsers reach it), besides loopback's",
        ),
    ] = None,
) -> None:
    """Serve the web console: streams, dead letters, the trail, runs, governance, SymPy."""
    from l9.console import (
        Backend,
        ConsoleConfig,
        ConsoleConfigError,
        ConsolePortError,
        create_app,
        listen,
        serve,
    )
    from l9.console.config import Reads, anchor_keys, read_token

    settings = load_settings()
    try:
        token = os.environ.get(TOKEN_ENV, "").strip() or read_token(
            token_file or settings.home_dir / "console-token", create=token_file is None
        )
        config = ConsoleConfig(
            host=host,
            port=port,
            token=token,
            reads=cast(Reads, reads),
            allowed_hosts=tuple(allowed_host or ()),
            anchor_keys=anchor_keys(anchor_key or []),
        ).check()
        sock = listen(host, port)
    except (ConsoleConfigError, ConsolePortError) as exc:
        raise fail(str(exc), 2) from None
    try:
        endpoints = resolve_endpoints(settings)
    except StackError as exc:
        sock.close()
        raise fail(str(exc)) from None
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    where = (
        f"{TOKEN_ENV}"
        if os.environ.get(TOKEN_ENV)
        else str(token_file or settings.home_dir / "console-token")
    )
    out.print(f"L9 console on {url} (namespace {settings.namespace}); Ctrl-C stops it")
    out.print(f"writes (replay, approve, deny) need the console token: {where}")
    if config.loopback_only:
        out.print(f"sign in: {url}/login?token={token}")

    async def main() -> None:
        backend = await Backend.open(settings, endpoints)
        await serve(create_app(backend, config, own_backend=True), sock)

    run(main)
