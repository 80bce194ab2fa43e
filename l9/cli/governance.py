"""``l9 acl render`` and ``l9 governance check|pending|approve|deny``: the command line of ``governance``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from bus import Keys, Publisher, open_client
from envelope import Ed25519Signer, Signer, agent_of_key, utcnow
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
    esc = engine.escalation
    console.print(
        f"escalations: deadline {esc.deadline_s:g} s; coalesced per origin and policy, "
        f"at most {esc.source_limit} per origin per {esc.source_window_s:g} s"
    )
    for anchor in engine.anchors:
        console.print(f"anchor {anchor.name}: {anchor.channel} ({anchor.receives})")
    acl = engine.signer_acl
    if acl:
        shared = f"; shared HMAC keys: {', '.join(sorted(acl.shared_keys))}" if acl.shared_keys else ""
        console.print(f"signer table: {len(acl.table)} agents ({', '.join(acl.table)}){shared}")
    else:
        console.print("signer table: none (consumers do not check)")
    if not settings.strict_mode:
        console.print("strict mode is off (L9_STRICT_MODE=false): placeholder policies are not applied")


def _with_escalations(
    who: str, work: Callable[[Escalations], Awaitable[T]], signer: Signer | None = None
) -> T:
    """Run ``work`` with an Escalations desk on the configured Redis, signing as this CLI (or
    with ``signer``: an anchor's own key)."""
    settings = load_settings()
    try:
        engine = PolicyEngine.load(settings.policy_file, strict_mode=settings.strict_mode)
    except PolicyFileError as exc:
        raise fail(str(exc), 2) from None
    endpoints = resolve_endpoints(settings)
    signer = signer or settings.signer()

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
        if row.origin is not None:
            latest = ", ".join(row.latest[-3:])
            console.print(f"    {row.count} violation(s) from {row.origin}; latest requests: {latest}")
    if not rows and not as_json:
        console.print("no pending escalations")


def anchor_signer(name: str | None, key_file: Path | None) -> tuple[str, Signer | None]:
    """(the anchor answering, the key it signs with). An anchor's key file names the anchor
    (key id ``<anchor>.<version>``): ``--as``, when given too, must agree. Without a key file
    the answer is signed as this CLI (``L9_SIGNING_*``): with the development keyring that
    is all there is; with per-agent keys the enforcer will not accept such an approval."""
    if key_file is None:
        if name is None:
            raise fail("give --as NAME (the anchor answering) or --key-file (the anchor's key)", 2)
        return name, None
    try:
        if str(key_file) == "-":  # from standard input: the key never sits in a container's files
            signer = Ed25519Signer.from_key_text(sys.stdin.read(), "<stdin>")
        else:
            signer = Ed25519Signer.from_key_file(key_file)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    owner = agent_of_key(signer.key_id)
    if name is not None and name.casefold() != owner.casefold():
        raise fail(f"--as {name!r}, but the key {signer.key_id!r} of {key_file} is {owner!r}'s", 2)
    return owner, signer


def _answer(
    escalation_id: str, name: str | None, key_file: Path | None, reason: str, *, approved: bool
) -> None:
    who, signer = anchor_signer(name, key_file)

    async def work(desk: Escalations) -> None:
        await desk.resolve(escalation_id, approved=approved, by=who, reason=reason)

    try:
        _with_escalations(who, work, signer)
    except NotAnAnchor as exc:
        raise fail(str(exc), 2) from None
    except EscalationError as exc:
        raise fail(str(exc), 1) from None
    key = f" (signed with {signer.key_id})" if signer is not None else ""
    console.print(
        f"escalation {escalation_id} {'approved' if approved else 'denied'} by {who}{key}: {reason}"
    )


AS_OPTION = typer.Option("--as", help="the anchor answering (one of the escalation's anchors)")
KEY_OPTION = typer.Option(
    "--key-file",
    help="the anchor's own signing key (l9 deploy anchor-key; - reads it from standard input): "
    "what makes an approval count",
)
REASON_OPTION = typer.Option(help="why; recorded in the audit trail")


@governance_app.command("approve")
def governance_approve(
    escalation_id: Annotated[str, typer.Argument(help="the escalation id (l9 governance pending)")],
    reason: Annotated[str, REASON_OPTION],
    name: Annotated[str | None, AS_OPTION] = None,
    key_file: Annotated[Path | None, KEY_OPTION] = None,
) -> None:
    """Approve an escalation as one of its anchors, signed with the anchor's key."""
    _answer(escalation_id, name, key_file, reason, approved=True)


@governance_app.command("deny")
def governance_deny(
    escalation_id: Annotated[str, typer.Argument(help="the escalation id (l9 governance pending)")],
    reason: Annotated[str, REASON_OPTION],
    name: Annotated[str | None, AS_OPTION] = None,
    key_file: Annotated[Path | None, KEY_OPTION] = None,
) -> None:
    """Deny an escalation as one of its anchors."""
    _answer(escalation_id, name, key_file, reason, approved=False)
