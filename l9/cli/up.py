"""The development loop's commands: ``l9 up`` (every built-in agent as a process, until
Ctrl-C: :mod:`l9.up`) and ``l9 publish TYPE JSON`` (one checked, signed envelope: :mod:`l9.publish`)."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from agents.runner import load_agent
from l9.cli.common import fail, load_settings, run
from l9.devstack import StackError, resolve_endpoints

commands = typer.Typer()


@commands.command()
def up(
    own: Annotated[
        list[str] | None,
        typer.Option("--with", help="also run one process of this agent of yours (module:Class)"),
    ] = None,
) -> None:
    """Run every built-in agent as its own process, as l9 demo does, until Ctrl-C.

    Their logs are interleaved on stdout, each line prefixed with its process (planner#0 | ...).
    With no REDIS_URL / DATABASE_URL the embedded stack is started, and left running."""
    from l9.demo_extraction import agent_env  # late: start-up speed (the pipeline's modules)
    from l9.up import processes, run_up

    settings = load_settings()
    extra = []
    for spec in own or []:
        try:
            extra.append((spec, load_agent(spec).name))
        except (ValueError, ImportError) as exc:
            raise fail(f"--with {spec}: {exc}", 2) from None
    try:
        endpoints = resolve_endpoints(settings)
    except StackError as exc:
        raise fail(str(exc)) from None
    if settings.redis_url and settings.database_url:
        print("using the servers of REDIS_URL and DATABASE_URL", flush=True)
    else:
        print(f"using the embedded stack in {settings.home_dir} (left running: l9 dev down stops it)")
        print(f"REDIS_URL={endpoints.redis_url}\nDATABASE_URL={endpoints.database_url}", flush=True)
    env = agent_env(settings, endpoints)
    code = run(lambda: run_up(processes(extra), env, sys.stdout))
    if code:
        raise typer.Exit(code)


@commands.command()
def publish(
    type_: Annotated[
        str, typer.Argument(metavar="TYPE", help="the envelope type, l9.<area>.<name>.v<major>")
    ],
    data: Annotated[str, typer.Argument(metavar="JSON", help="the payload, a JSON object")],
    stream: Annotated[str | None, typer.Option(help="publish there (default: the type's stream)")] = None,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="import this module first: it declares payload types of yours"),
    ] = None,
) -> None:
    """Publish one envelope: the payload checked against its type's model, signed; prints its id.

    Bad input (JSON, type, a field of the payload, stream name) is one line naming it, exit 2."""
    from l9.publish import PublishError, prepare
    from l9.publish import publish as send

    settings = load_settings()
    try:
        envelope, where = prepare(
            type_, data, stream=stream, imports=imports or [], source=_source(settings.signing_key_id)
        )
    except PublishError as exc:
        raise fail(str(exc), 2) from None
    try:
        run(lambda: send(settings, envelope, where))
    except StackError as exc:
        raise fail(str(exc)) from None
    print(envelope.id)


def _source(key_id: str) -> str:
    from l9.publish import source_of

    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        who = key_id
    return source_of(who)
