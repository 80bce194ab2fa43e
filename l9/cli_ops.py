"""``l9 dead list|replay`` and ``l9 deploy env|rotate-*``: operating a deployment.

Registered on the ``l9`` app when this module is imported (the last lines of ``l9.cli``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
import typer
from rich.console import Console

from bus import Keys, check_stream_name, connect
from l9.dead import DeadLetter, NotDead, list_dead, replay
from l9.deploy import (
    DeployError,
    prepare_env,
    retire_signing_key,
    rotate_audit_key,
    rotate_redis_password,
    rotate_signing_key,
)

dead_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, put them back on their stream.")
deploy_app = typer.Typer(
    no_args_is_help=True, help="The compose deployment's secrets (.env, secrets/): create and rotate."
)
console = Console(highlight=False, soft_wrap=True)
T = TypeVar("T")

ENV_FILE = Annotated[Path, typer.Option("--env-file", help="the compose deployment's .env")]
AUDIT_KEY = Annotated[Path, typer.Option("--audit-key", help="the audit key file the compose file mounts")]
PASSWORDS = Annotated[
    Path | None,
    typer.Option(help="the agents' Redis passwords (default: L9_HOME/redis-passwords.json)"),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    from l9.cli import _fail as fail

    return fail(message, code)


def _with_redis(work: Callable[[aioredis.Redis, Keys], Awaitable[T]]) -> T:
    from l9.cli import _run, _settings
    from l9.devstack import resolve_endpoints

    settings = _settings()
    url = settings.redis_url or resolve_endpoints(settings).redis_url

    async def main() -> T:
        redis = connect(url)
        try:
            return await work(redis, Keys(settings.namespace))
        finally:
            await redis.aclose()

    return _run(main)


def _stream(name: str) -> str:
    try:
        return check_stream_name(name)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None


def _letter_lines(d: DeadLetter) -> str:
    return (
        f"{d.stream} {d.id}  {d.type}  envelope {d.envelope_id}\n"
        f"    {d.reason} (group {d.group}, {d.deliveries} deliveries, {d.time}): {d.detail}"
    )


@dead_app.command("list")
def dead_list(
    stream: Annotated[str | None, typer.Argument(help="a stream (default: every stream)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many per stream")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The dead letters of a stream (or of all), oldest first, with why each was given up on."""
    from l9.status import stream_names

    names = [_stream(stream)] if stream else None

    async def work(redis: aioredis.Redis, keys: Keys) -> list[DeadLetter]:
        streams = names or await stream_names(redis, keys)
        return [d for name in streams for d in await list_dead(redis, keys, name, limit)]

    letters = _with_redis(work)
    for letter in letters:
        console.print(json.dumps(letter.to_dict()) if as_json else _letter_lines(letter))
    if not letters and not as_json:
        console.print("no dead letters")


@dead_app.command("replay")
def dead_replay(
    stream: Annotated[str, typer.Argument(help="the stream the letters are of")],
    ids: Annotated[list[str] | None, typer.Argument(help="dead-letter ids (l9 dead list)")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="every dead letter of the stream")] = False,
) -> None:
    """Put dead letters back on their stream (the same envelopes), once their cause is fixed."""
    name = _stream(stream)
    if bool(ids) == replay_all:
        raise _fail("name the dead-letter ids to replay, or --all (not both)", 2)

    async def work(redis: aioredis.Redis, keys: Keys) -> dict[str, str]:
        return await replay(redis, keys, name, None if replay_all else ids)

    try:
        done = _with_redis(work)
    except NotDead as exc:
        raise _fail(str(exc)) from None
    for dead_id, new_id in done.items():
        console.print(f"{name}: dead letter {dead_id} replayed as entry {new_id}")
    console.print(f"{len(done)} dead letter(s) replayed on {name}")


def _deploy(work: Callable[[], T]) -> T:
    try:
        return work()
    except DeployError as exc:
        raise _fail(str(exc)) from None


def _passwords_path(passwords: Path | None) -> Path:
    from l9.cli import _settings

    return passwords or _settings().home_dir / "redis-passwords.json"


@deploy_app.command("env")
def deploy_env(
    env_file: ENV_FILE = Path(".env"),
    audit_key: AUDIT_KEY = Path("secrets/audit-key.hex"),
    passwords: PASSWORDS = None,
) -> None:
    """Write what docker-compose.yml needs and is missing: .env (passwords, signing key), the audit key.

    Existing values are kept; the agents' Redis passwords follow the passwords file of
    ``l9 acl render``. Secrets are never printed.
    """
    done = _deploy(lambda: prepare_env(env_file, _passwords_path(passwords), audit_key))
    for name, what in done.items():
        console.print(f"{name}: {what}")
    console.print(f"{env_file}: up to date ({len(done)} change(s))")


@deploy_app.command("rotate-signing-key")
def deploy_rotate_signing_key(
    env_file: ENV_FILE = Path(".env"),
    key_id: Annotated[str | None, typer.Option("--id", help="the new key's id (default: k<time>)")] = None,
) -> None:
    """Add a new envelope signing key and sign with it; older keys stay to verify (then recreate)."""
    new, kept = _deploy(lambda: rotate_signing_key(env_file, key_id))
    console.print(f"signing with {new}; still verifying {', '.join(kept)}")


@deploy_app.command("retire-signing-key")
def deploy_retire_signing_key(
    key_id: Annotated[str, typer.Argument(help="the old key's id")],
    env_file: ENV_FILE = Path(".env"),
) -> None:
    """Remove an old signing key once nothing it signed is still to be read."""
    left = _deploy(lambda: retire_signing_key(env_file, key_id))
    console.print(f"retired {key_id}; keys left: {', '.join(left)}")


@deploy_app.command("rotate-audit-key")
def deploy_rotate_audit_key(
    env_file: ENV_FILE = Path(".env"),
    audit_key: AUDIT_KEY = Path("secrets/audit-key.hex"),
) -> None:
    """A new audit (checkpoint and report) key; the old public key stays trusted for old checkpoints."""
    old, new = _deploy(lambda: rotate_audit_key(env_file, audit_key))
    console.print(f"audit key {new} signs from now on; {old} stays in L9_AUDIT_TRUSTED_KEYS")


@deploy_app.command("rotate-redis-password")
def deploy_rotate_redis_password(
    agent: Annotated[str, typer.Argument(help="the agent whose Redis password changes")],
    passwords: PASSWORDS = None,
) -> None:
    """A new Redis password for one agent (then: l9 acl render, l9 deploy env, recreate)."""
    path = _passwords_path(passwords)
    _deploy(lambda: rotate_redis_password(path, agent))
    console.print(f"new Redis password for {agent} in {path}")


def register(app: typer.Typer) -> None:
    """Add ``l9 dead`` and ``l9 deploy`` to the ``l9`` command."""
    app.add_typer(dead_app, name="dead")
    app.add_typer(deploy_app, name="deploy")


from l9.cli import app as _app  # noqa: E402 (l9.cli imports this module last; app exists by then)

register(_app)
