"""``l9 acl render`` and ``l9 governance check``: the command line of the ``governance`` package.

Registered on the ``l9`` app when this module is imported (the last line of ``l9.cli``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bus import Keys
from governance import (
    PolicyEngine,
    PolicyFileError,
    fill_passwords,
    load_policy_file,
    redis_user_name,
    render_acl,
)

acl_app = typer.Typer(no_args_is_help=True, help="Redis ACLs: one Redis user per agent.")
governance_app = typer.Typer(no_args_is_help=True, help="Governance policies.")
console = Console()


def _fail(message: str, code: int = 1) -> typer.Exit:
    from l9.cli import _fail as fail

    return fail(message, code)


def _read_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(f"{path}: not a JSON object of agent -> password ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise _fail(f"{path}: expected a JSON object of agent -> password")
    return {str(k): v for k, v in data.items()}


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only (it holds passwords)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


@acl_app.command("render")
def acl_render(
    out: Annotated[Path | None, typer.Option(help="the ACL file (default: L9_HOME/redis-users.acl)")] = None,
    passwords: Annotated[
        Path | None,
        typer.Option(help="JSON agent -> password, kept, completed (default: L9_HOME/redis-passwords.json)"),
    ] = None,
) -> None:
    """Write a Redis ACL file from the policy file's ``identity.redis_users``.

    Each agent gets the user ``<namespace>-<agent>`` with the bus commands only, on its own
    streams and keys. Passwords live in the passwords file (mode 0600); the ACL file holds
    their SHA-256 only. Load it with ``aclfile`` in redis.conf or ``ACL LOAD``.
    """
    from l9.cli import _settings

    settings = _settings()
    try:
        users = load_policy_file(settings.policy_file).identity.redis_users
    except PolicyFileError as exc:
        raise _fail(str(exc), 2) from None
    if not users:
        raise _fail("the policy file declares no identity.redis_users", 2)
    out = out or settings.home_dir / "redis-users.acl"
    pw_path = passwords or settings.home_dir / "redis-passwords.json"
    secrets = fill_passwords(users, _read_passwords(pw_path))
    keys = Keys(settings.namespace)
    text = render_acl(users, keys, secrets)
    _write_private(pw_path, json.dumps(secrets, indent=2, sort_keys=True) + "\n")
    _write_private(out, text)
    for agent in sorted(users):
        console.print(
            f"{redis_user_name(keys.namespace, agent)}: {users[agent].model_dump(exclude_defaults=True)}"
        )
    console.print(f"wrote {out} ({len(users)} users); passwords in {pw_path}")


@governance_app.command("check")
def governance_check(
    file: Annotated[
        Path | None, typer.Argument(help="a policy file (default: L9_POLICY_FILE or the shipped one)")
    ] = None,
) -> None:
    """Validate a policy file and list what it declares; exit 2 (with file:line) if it is unusable."""
    from l9.cli import _settings

    settings = _settings()
    try:
        engine = PolicyEngine.load(file or settings.policy_file, strict_mode=settings.strict_mode)
    except PolicyFileError as exc:
        raise _fail(str(exc), 2) from None
    for policy in engine.policies:
        anchors = f" -> {', '.join(policy.anchors)}" if policy.outcome.value == "escalate" else ""
        console.print(f"policy {policy.ref}: {policy.rule_name}, {policy.outcome.value}{anchors}")
    for limit in engine.rate_limits:
        console.print(f"rate limit {limit.id}: {limit.limit} per {limit.window_s:g} s per {limit.per}")
    for anchor in engine.anchors:
        console.print(f"anchor {anchor.name}: {anchor.channel} ({anchor.receives})")
    acl = engine.signer_acl
    console.print(
        f"signer table: {len(acl.table)} keys" if acl else "signer table: none (consumers do not check)"
    )
    if not settings.strict_mode:
        console.print("strict mode is off (L9_STRICT_MODE=false): placeholder policies are not applied")


def register(app: typer.Typer) -> None:
    """Add ``l9 acl`` and ``l9 governance`` to the ``l9`` command."""
    app.add_typer(acl_app, name="acl")
    app.add_typer(governance_app, name="governance")


from l9.cli import app as _app  # noqa: E402 (l9.cli imports this module last; app exists by then)

register(_app)
