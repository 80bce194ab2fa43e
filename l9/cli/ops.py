"""Operating a deployment: ``l9 status``, ``l9 health``, ``l9 trim``, ``l9 asyncapi``,
``l9 dead list|replay`` and ``l9 deploy env|agent-keys|rotate-*|retire-agent-key``."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
import typer
from rich.console import Console

from bus import Keys, check_stream_name, drop_finished_reply_streams, open_client, trim_acknowledged
from bus.connection import RedisClient
from l9.asyncapi import build_document, generated_types, load_payload_modules
from l9.cli.common import fail, load_settings, run
from l9.dead import DeadLetter, NotDead, list_dead, replay
from l9.deploy import (
    DeployError,
    agent_keys,
    anchor_key,
    prepare_env,
    retire_agent_key,
    rotate_agent_key,
    rotate_audit_key,
    rotate_redis_password,
)
from l9.devstack import resolve_endpoints
from l9.health import AGENT_NAME, Target, health_of, report
from l9.status import collect_status, render_status, stream_names

commands = typer.Typer()
dead_app = typer.Typer(
    name="dead", no_args_is_help=True, help="Dead letters: list them, put them back on their stream."
)
deploy_app = typer.Typer(
    name="deploy",
    no_args_is_help=True,
    help="The compose deployment's secrets (.env, secrets/): create and rotate.",
)
console = Console()
plain = Console(highlight=False, soft_wrap=True)
T = TypeVar("T")
#: ``l9 trim`` deletes RPC reply streams that every group consumed and that were idle this long.
REPLY_STREAM_IDLE_S = 600.0

ENV_FILE = Annotated[Path, typer.Option("--env-file", help="the compose deployment's .env")]
AUDIT_KEY = Annotated[Path, typer.Option("--audit-key", help="the audit key file the compose file mounts")]
AGENT_KEYS = Annotated[
    Path, typer.Option("--agent-keys", help="the folder of the agents' key files the compose file mounts")
]
PASSWORDS = Annotated[
    Path | None,
    typer.Option(help="the agents' Redis passwords (default: L9_HOME/redis-passwords.json)"),
]


# -- l9 status, health, trim, asyncapi ------------------------------------------------------------
@commands.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Streams, consumer groups, consumers, lag, pending and dead-letter counts."""
    settings = load_settings()
    endpoints = resolve_endpoints(settings)

    async def snapshot() -> dict[str, object]:
        redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
        try:
            return await collect_status(redis, Keys(settings.namespace))
        finally:
            await redis.aclose()

    data = run(snapshot)
    if as_json:
        print(json.dumps(data))
    else:
        render_status(data, console)


@commands.command()
def health(
    agent: Annotated[str, typer.Argument(help="the agent's name (its consumer group), e.g. sympy")],
    minimum: Annotated[int, typer.Option("--min", min=1, help="live consumers required")] = 1,
    instance: Annotated[
        list[str] | None, typer.Option(help="also probe consumer AGENT-INSTANCE (agent run --instance)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a line")] = False,
) -> None:
    """Exit 0 when a consumer of AGENT has a fresh heartbeat, else 1 with the reason (health checks)."""
    # The console script answers a plain one itself, before this CLI loads (l9.entry); what
    # reaches this command is the rest (--help, usage errors, settings it refuses) or python -m l9.
    if not AGENT_NAME.fullmatch(agent):
        raise fail(f"{agent!r} is not an agent name (letters, digits, '_', '.', '-')", 2)
    target = Target.of(load_settings())
    result = anyio.run(lambda: health_of(target, agent, minimum=minimum, instances=instance or ()))
    code = report(result, as_json=as_json)
    if code:
        raise typer.Exit(code)


@commands.command()
def trim(
    max_age: Annotated[
        float | None, typer.Option(help="also keep entries younger than this many seconds")
    ] = None,
) -> None:
    """Trim every stream to what all its consumer groups have acknowledged."""
    settings = load_settings()
    endpoints = resolve_endpoints(settings)
    keys = Keys(settings.namespace)

    async def work() -> tuple[dict[str, int], list[str]]:
        redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
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

    removed, dropped = run(work)
    for name, n in removed.items():
        console.print(f"{name}: {n} acknowledged entries removed")
    if dropped:
        console.print(f"{len(dropped)} finished reply streams (idle {REPLY_STREAM_IDLE_S:g}s) deleted")


@commands.command()
def asyncapi(
    out: Annotated[Path | None, typer.Option(help="write the document here (default: stdout)")] = None,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--extraction",
            metavar="FOLDER",
            help="the document of a generated ecosystem instead: the types of this extraction folder, "
            "typed ones with their declared fields",
        ),
    ] = None,
) -> None:
    """Write the AsyncAPI 3.0 document of every stream and message type (JSON)."""
    settings = load_settings()
    if folder is None:
        load_payload_modules()
        document = build_document(keys=Keys(settings.namespace))
    else:
        code = folder / "code"
        if not code.is_dir():
            raise fail(f"{folder}: not an extraction folder (it has no code/ folder)", 2)
        try:
            types = generated_types(code)
        except (ImportError, SyntaxError) as exc:
            raise fail(f"{folder}: its generated code does not import: {exc}", 2) from None
        document = build_document(types, keys=Keys(settings.namespace))
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        console.print(f"AsyncAPI {out}")


# -- l9 dead ---------------------------------------------------------------------------------------
def _with_redis(work: Callable[[RedisClient, Keys], Awaitable[T]]) -> T:
    settings = load_settings()
    url = settings.redis_url or resolve_endpoints(settings).redis_url

    async def main() -> T:
        redis = await open_client(url, cluster=settings.redis_cluster)
        try:
            return await work(redis, Keys(settings.namespace))
        finally:
            await redis.aclose()

    return run(main)


def _stream(name: str) -> str:
    try:
        return check_stream_name(name)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


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
    names = [_stream(stream)] if stream else None

    async def work(redis: RedisClient, keys: Keys) -> list[DeadLetter]:
        streams = names or await stream_names(redis, keys)
        return [d for name in streams for d in await list_dead(redis, keys, name, limit)]

    letters = _with_redis(work)
    for letter in letters:
        plain.print(json.dumps(letter.to_dict()) if as_json else _letter_lines(letter))
    if not letters and not as_json:
        plain.print("no dead letters")


@dead_app.command("replay")
def dead_replay(
    stream: Annotated[str, typer.Argument(help="the stream the letters are of")],
    ids: Annotated[list[str] | None, typer.Argument(help="dead-letter ids (l9 dead list)")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="every dead letter of the stream")] = False,
) -> None:
    """Put dead letters back on their stream (the same envelopes), once their cause is fixed."""
    name = _stream(stream)
    if bool(ids) == replay_all:
        raise fail("name the dead-letter ids to replay, or --all (not both)", 2)

    async def work(redis: RedisClient, keys: Keys) -> dict[str, str]:
        return await replay(redis, keys, name, None if replay_all else ids)

    try:
        done = _with_redis(work)
    except NotDead as exc:
        raise fail(str(exc)) from None
    for dead_id, new_id in done.items():
        plain.print(f"{name}: dead letter {dead_id} replayed as entry {new_id}")
    plain.print(f"{len(done)} dead letter(s) replayed on {name}")


# -- l9 deploy -------------------------------------------------------------------------------------
def _deploy(work: Callable[[], T]) -> T:
    try:
        return work()
    except DeployError as exc:
        raise fail(str(exc)) from None


def _passwords_path(passwords: Path | None) -> Path:
    return passwords or load_settings().home_dir / "redis-passwords.json"


@deploy_app.command("env")
def deploy_env(
    env_file: ENV_FILE = Path(".env"),
    audit_key: AUDIT_KEY = Path("secrets/audit-key.hex"),
    keys: AGENT_KEYS = Path("secrets/agent-keys"),
    passwords: PASSWORDS = None,
) -> None:
    """Write what docker-compose.yml needs and is missing: .env, the audit key, the agents' keys.

    .env: passwords, L9_PUBLIC_KEYS, L9_SIGNING_SCHEME=ed25519 (a shared L9_SIGNING_KEYS is
    removed). One Ed25519 key file per agent of the passwords file, and one for ``cli`` (the
    tools service). Existing values and key files are kept; the agents' Redis passwords
    follow the passwords file of ``l9 acl render``. Secrets are never printed.
    """
    done = _deploy(lambda: prepare_env(env_file, _passwords_path(passwords), audit_key, keys))
    for name, what in done.items():
        plain.print(f"{name}: {what}")
    plain.print(f"{env_file}: up to date ({len(done)} change(s))")


@deploy_app.command("agent-keys")
def deploy_agent_keys(
    agent: Annotated[str | None, typer.Argument(help="only this agent's keys")] = None,
    old: Annotated[bool, typer.Option("--old", help="only the ids of keys no longer signing")] = False,
    env_file: ENV_FILE = Path(".env"),
    keys: AGENT_KEYS = Path("secrets/agent-keys"),
) -> None:
    """The keys of L9_PUBLIC_KEYS: whose each is, and whether its agent signs with it."""
    found = [k for k in _deploy(lambda: agent_keys(env_file, keys)) if agent in (None, k.agent)]
    for key in found:
        if not old:
            plain.print(f"{key.key_id}  {key.agent}  {'signs' if key.signs else 'old, still trusted'}")
        elif not key.signs:
            plain.print(key.key_id)


@deploy_app.command("rotate-agent-key")
def deploy_rotate_agent_key(
    agent: Annotated[str, typer.Argument(help="the agent (or cli) whose key changes")],
    env_file: ENV_FILE = Path(".env"),
    keys: AGENT_KEYS = Path("secrets/agent-keys"),
) -> None:
    """A new envelope signing key for one agent; its old key stays trusted (then recreate)."""
    before, new = _deploy(lambda: rotate_agent_key(env_file, keys, agent))
    plain.print(f"{agent} signs with {new} once recreated; {before} stays in L9_PUBLIC_KEYS until retired")


@deploy_app.command("anchor-key")
def deploy_anchor_key(
    anchor: Annotated[str, typer.Argument(help="the governance anchor (a name of the policy's anchors)")],
    out: Annotated[Path, typer.Option("--out", help="the new private key file (the anchor keeps it)")],
    env_file: ENV_FILE = Path(".env"),
) -> None:
    """A signing key for a governance anchor: its approvals count only when signed with it."""
    key_id = _deploy(lambda: anchor_key(env_file, out, anchor))
    plain.print(
        f"{anchor}'s key {key_id} is in {out} and trusted in L9_PUBLIC_KEYS (recreate the agents); "
        f"approve with: l9 governance approve ID --key-file {out} --reason ..."
    )


@deploy_app.command("retire-agent-key")
def deploy_retire_agent_key(
    key_id: Annotated[str, typer.Argument(help="an old key's id (l9 deploy agent-keys --old)")],
    env_file: ENV_FILE = Path(".env"),
    keys: AGENT_KEYS = Path("secrets/agent-keys"),
) -> None:
    """Stop trusting an old agent key once nothing it signed is still to be read (then recreate)."""
    left = _deploy(lambda: retire_agent_key(env_file, keys, key_id))
    plain.print(f"retired {key_id}; {len(left)} key(s) left in L9_PUBLIC_KEYS")


@deploy_app.command("rotate-audit-key")
def deploy_rotate_audit_key(
    env_file: ENV_FILE = Path(".env"),
    audit_key: AUDIT_KEY = Path("secrets/audit-key.hex"),
) -> None:
    """A new audit (checkpoint and report) key; the old public key stays trusted for old checkpoints."""
    old, new = _deploy(lambda: rotate_audit_key(env_file, audit_key))
    plain.print(f"audit key {new} signs from now on; {old} stays in L9_AUDIT_TRUSTED_KEYS")


@deploy_app.command("rotate-redis-password")
def deploy_rotate_redis_password(
    agent: Annotated[str, typer.Argument(help="the agent whose Redis password changes")],
    passwords: PASSWORDS = None,
) -> None:
    """A new Redis password for one agent (then: l9 acl render, l9 deploy env, recreate)."""
    path = _passwords_path(passwords)
    _deploy(lambda: rotate_redis_password(path, agent))
    plain.print(f"new Redis password for {agent} in {path}")
