"""``l9 acl render`` and ``l9 governance check|pending|approve|deny``: the command line of ``governance``."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from bus import Keys, Publisher, open_client
from envelope import Signer, utcnow
from governance import (
    EscalationError,
    Escalations,
    NotAnAnchor,
    PolicyEngine,
    PolicyFileError,
    cli_source,
    fill_passwords,
    load_policy_file,
    redis_user_name,
    render_acl,
)
from l9.cli.common import fail, load_settings, run
from l9.devstack import resolve_endpoints

acl_app = typer.Typer(name="acl", no_args_is_help=True, help="Redis ACLs: one Redis user per agent.")
governance_app = typer.Typer(name="governance", no_args_is_help=True, help="Governance policies.")
console = Console()
T = TypeVar("T")


def _read_passwords(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(f"{path}: not a JSON object of agent -> password ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise fail(f"{path}: expected a JSON object of agent -> password")
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
    settings = load_settings()
    try:
        users = load_policy_file(settings.policy_file).identity.redis_users
    except PolicyFileError as exc:
        raise fail(str(exc), 2) from None
    if not users:
        raise fail("the policy file declares no identity.redis_users", 2)
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
    settings = load_settings()
    try:
        engine = PolicyEngine.load(file or settings.policy_file, strict_mode=settings.strict_mode)
    except PolicyFileError as exc:
        raise fail(str(exc), 2) from None
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


def _with_escalations(who: str, work: Callable[[Escalations], Awaitable[T]]) -> T:
    """Run ``work`` with an Escalations desk on the configured Redis, signing as this CLI."""
    settings = load_settings()
    try:
        engine = PolicyEngine.load(settings.policy_file, strict_mode=settings.strict_mode)
    except PolicyFileError as exc:
        raise fail(str(exc), 2) from None
    endpoints = resolve_endpoints(settings)
    signer = Signer(settings.keyring(), settings.signing_key_id)

    async def main() -> T:
        redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
        try:
            publisher = Publisher(redis, Keys(settings.namespace), signer)
            desk = Escalations(
                redis, publisher, spec=engine.escalation, anchors=engine.anchors, source=cli_source(who)
            )
            return await work(desk)
        finally:
            await redis.aclose()

    return run(main)


@governance_app.command("pending")
def governance_pending(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """Unanswered escalations (those past their deadline are denied first, by ``deadline``)."""
    rows = _with_escalations("pending", lambda desk: desk.pending())
    for row in rows:
        if as_json:
            print(row.to_json())
            continue
        left = (row.deadline - utcnow()).total_seconds()
        console.print(
            f"{row.id}  {row.policy}  anchors: {', '.join(row.anchors)}  deadline in {left:.0f} s\n"
            f"    {row.subject}\n    {row.reason}"
        )
    if not rows and not as_json:
        console.print("no pending escalations")


def _answer(escalation_id: str, name: str, reason: str, *, approved: bool) -> None:
    async def work(desk: Escalations) -> None:
        await desk.resolve(escalation_id, approved=approved, by=name, reason=reason)

    try:
        _with_escalations(name, work)
    except NotAnAnchor as exc:
        raise fail(str(exc), 2) from None
    except EscalationError as exc:
        raise fail(str(exc), 1) from None
    console.print(f"escalation {escalation_id} {'approved' if approved else 'denied'} by {name}: {reason}")


AS_OPTION = typer.Option("--as", help="the anchor answering (one of the escalation's anchors)")
REASON_OPTION = typer.Option(help="why; recorded in the audit trail")


@governance_app.command("approve")
def governance_approve(
    escalation_id: Annotated[str, typer.Argument(help="the escalation id (l9 governance pending)")],
    name: Annotated[str, AS_OPTION],
    reason: Annotated[str, REASON_OPTION],
) -> None:
    """Approve an escalation as one of its anchors."""
    _answer(escalation_id, name, reason, approved=True)


@governance_app.command("deny")
def governance_deny(
    escalation_id: Annotated[str, typer.Argument(help="the escalation id (l9 governance pending)")],
    name: Annotated[str, AS_OPTION],
    reason: Annotated[str, REASON_OPTION],
) -> None:
    """Deny an escalation as one of its anchors."""
    _answer(escalation_id, name, reason, approved=False)
