"""The secrets of the compose deployment: ``.env`` and ``secrets/``, made and rotated.

``docker-compose.yml`` reads every secret from ``.env`` (next to it), the audit key from
``secrets/audit-key.hex`` and each agent's envelope signing key from
``secrets/agent-keys/<agent>.json``. :func:`prepare_env` creates what is missing and never
changes what exists, except the agents' Redis passwords, which always follow
``L9_HOME/redis-passwords.json`` (kept by ``l9 acl render``), and ``L9_PUBLIC_KEYS``, which
always holds every agent's current public key.

Envelopes are signed per agent (``L9_SIGNING_SCHEME=ed25519``): one Ed25519 key per agent of
the passwords file (the agents of deploy/identity.yaml, each one service of the compose file
in either profile) and one for :data:`CLI_SIGNER`, the operators' ``l9`` (the tools
services). A key file, holding the private seed, is mounted into its own agent's containers
only; ``L9_PUBLIC_KEYS`` (every key any process trusts) goes to all. The shared HMAC keyring
(``L9_SIGNING_KEYS``, with which every verifier could sign as any agent) is not made for this
deployment, and dropped from an ``.env`` that still has it (:data:`KEYRING`).

Rotation keeps what is needed to check old work:

* an agent's key: a new key file (key id ``<agent>.k<time>``) signs from now on; the old public
  key stays in ``L9_PUBLIC_KEYS`` so envelopes already on the streams still verify, until
  retired;
* the audit key: the new seed signs checkpoints and reports, the old public key joins
  ``L9_AUDIT_TRUSTED_KEYS`` so earlier checkpoints still verify;
* an agent's Redis password: a new one in the passwords file (render the ACL file again, then
  :func:`prepare_env`).

Values are written single-quoted (literal for both Compose v1 and v2, no ``$``
interpolation); the files are written atomically. ``.env`` is readable by its owner only.
The key files (audit, agents) are mode 0644 in folders of mode 0700: Compose bind-mounts a
secret's file into the container as it is on the host, owner and mode kept, and the
container's user (uid 10001 in the image) is not that owner, so it reads the file through the
"other" bits; the 0700 folders keep every other user of the host out.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dotenv import dotenv_values

from envelope import Ed25519Signer, agent_of_key
from memory.postgres import SigningKey

#: Secrets generated once and then kept.
GENERATED = ("POSTGRES_PASSWORD", "NEO4J_PASSWORD", "REDIS_ADMIN_PASSWORD")
#: The signer of the operators' ``l9`` (the tools services): extraction requests, SymPy calls.
CLI_SIGNER = "cli"
#: The shared HMAC keyring of the ``hmac`` scheme: never made for the compose deployment, and
#: removed from an ``.env`` that has it (its agents sign with their own keys).
KEYRING = ("L9_SIGNING_KEYS", "L9_SIGNING_KEY_ID")
SCHEME = "ed25519"
#: Characters a password may have to sit in a ``redis://user:password@host`` URL unquoted.
URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]+")
ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


class DeployError(ValueError):
    """The deployment's files are missing or not what they should be."""


def password_variable(agent: str) -> str:
    """The ``.env`` variable of an agent's Redis password: ``L9_REDIS_PASSWORD_<AGENT>``."""
    return "L9_REDIS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", agent).upper()


def read_env(path: Path) -> dict[str, str]:
    """The variables of an ``.env`` file (none if it does not exist)."""
    if not path.exists():
        return {}
    return {k: v for k, v in dotenv_values(path, interpolate=False).items() if v is not None}


def write_env(path: Path, updates: Mapping[str, str], remove: Collection[str] = ()) -> None:
    """Set ``updates`` in ``path`` (lines of those variables replaced in place, new ones
    appended) and drop the lines of the variables in ``remove``."""
    for name, value in updates.items():
        if "'" in value or "\n" in value:
            raise DeployError(f"{name}: a value in {path} may not hold a quote or a line break")
    lines = path.read_text().splitlines() if path.exists() else []
    todo, kept = dict(updates), []
    for line in lines:
        found = ENV_LINE.match(line)
        variable = found.group(1) if found else ""
        if variable in remove:
            continue
        kept.append(f"{variable}='{todo.pop(variable)}'" if variable in todo else line)
    kept += [f"{variable}='{value}'" for variable, value in todo.items()]
    _write_atomic(path, "\n".join(kept) + "\n", 0o600)


def _write_atomic(path: Path, text: str, mode: int, *, exclusive: bool = False) -> None:
    """Write ``path`` whole or not at all; ``exclusive``: only if it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    if not exclusive:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic, and fails where a file is
    except FileExistsError:
        raise DeployError(f"{path} appeared meanwhile (another l9 deploy?): it is kept, run again") from None
    finally:
        tmp.unlink(missing_ok=True)


def _private_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def read_passwords(path: Path) -> dict[str, str]:
    """The agents' Redis passwords (``l9 acl render`` writes them)."""
    if not path.exists():
        raise DeployError(
            f"{path} does not exist: render the Redis users first "
            "(L9_POLICY_FILE=deploy/identity.yaml l9 acl render)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeployError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DeployError(f"{path}: expected a JSON object of agent -> password")
    for agent, password in data.items():
        if not URL_SAFE.fullmatch(password):
            raise DeployError(f"{path}: the password of {agent!r} has characters a Redis URL cannot hold")
    return {str(k): v for k, v in data.items()}


def new_key_id(now: datetime | None = None) -> str:
    return "k" + (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")


def prepare_env(
    env_path: Path, passwords_path: Path, audit_key_path: Path, keys_dir: Path, now: datetime | None = None
) -> dict[str, str]:
    """Create what the compose file needs and is missing; ``{variable or file: what was done}``.

    The agents' keys: one per agent of the passwords file, and one for :data:`CLI_SIGNER`,
    in ``keys_dir``; a new key's id is stamped with ``now``.
    """
    current, updates, done = read_env(env_path), {}, {}
    passwords = read_passwords(passwords_path)
    for name in GENERATED:
        if not current.get(name):
            updates[name], done[name] = secrets.token_urlsafe(24), "created"
    for agent, password in sorted(passwords.items()):
        name = password_variable(agent)
        if current.get(name) != password:
            updates[name], done[name] = password, "updated" if name in current else "created"
    signers = [*sorted(passwords), CLI_SIGNER]
    updates |= _signing_env(current, env_path, keys_dir, signers, now, done)
    dropped = [name for name in KEYRING if name in current]
    for name in dropped:
        done[name] = "removed (the shared HMAC keyring: each agent signs with its own key now)"
    if updates or dropped:
        write_env(env_path, updates, remove=dropped)
    if not audit_key_path.exists():
        write_audit_key(audit_key_path, secrets.token_hex(32))
        done[str(audit_key_path)] = "created"
    return done


def _signing_env(
    current: Mapping[str, str],
    env_path: Path,
    keys_dir: Path,
    agents: Iterable[str],
    now: datetime | None,
    done: dict[str, str],
) -> dict[str, str]:
    """What ``.env`` needs for per-agent keys: each agent's key (made when missing) among
    ``L9_PUBLIC_KEYS``, and the scheme."""
    updates = {}
    trusted = public_keys(current, env_path, required=False)
    wanted = _trust(trusted, [_agent_key(keys_dir, a, trusted, done, now) for a in agents], env_path)
    if wanted != trusted:
        updates["L9_PUBLIC_KEYS"] = _keys_json(wanted)
        done["L9_PUBLIC_KEYS"] = "updated" if trusted else "created"
    if current.get("L9_SIGNING_SCHEME") != SCHEME:
        updates["L9_SIGNING_SCHEME"] = SCHEME
        done["L9_SIGNING_SCHEME"] = "updated" if "L9_SIGNING_SCHEME" in current else "created"
    return updates


# -- the audit key ---------------------------------------------------------------------------------
def write_audit_key(path: Path, seed_hex: str) -> None:
    """The audit key file: its folder private (0700), the file readable by the container's user."""
    _private_folder(path.parent)
    _write_atomic(path, seed_hex + "\n", 0o644)


def rotate_audit_key(env_path: Path, key_path: Path) -> tuple[str, str]:
    """A new audit key; the old public key joins L9_AUDIT_TRUSTED_KEYS. (old key id, new key id)"""
    try:
        old = SigningKey.from_private_bytes(bytes.fromhex(key_path.read_text().strip()))
    except (OSError, ValueError) as exc:
        raise DeployError(f"{key_path}: cannot read the audit key ({exc})") from None
    env = read_env(env_path)
    try:
        trusted = json.loads(env.get("L9_AUDIT_TRUSTED_KEYS") or "{}")
    except json.JSONDecodeError as exc:
        raise DeployError(f"{env_path}: L9_AUDIT_TRUSTED_KEYS is not JSON ({exc})") from None
    trusted[old.key_id] = old.public_bytes.hex()
    seed = secrets.token_hex(32)
    write_env(env_path, {"L9_AUDIT_TRUSTED_KEYS": json.dumps(trusted, sort_keys=True)})
    write_audit_key(key_path, seed)
    return old.key_id, SigningKey.from_private_bytes(bytes.fromhex(seed)).key_id


# -- the agents' envelope signing keys -------------------------------------------------------------
@dataclass(frozen=True)
class TrustedKey:
    """A key of ``L9_PUBLIC_KEYS``: whose it is, and whether its agent signs with it now."""

    key_id: str
    agent: str
    signs: bool


def agent_key_path(keys_dir: Path, agent: str) -> Path:
    """An agent's key file (the compose file mounts it into that agent's containers only)."""
    return keys_dir / f"{agent}.json"


def read_agent_key(keys_dir: Path, agent: str) -> Ed25519Signer:
    """The key ``agent`` signs with now: its key file's, which must be one of its keys."""
    path = agent_key_path(keys_dir, agent)
    if not path.exists():
        have = sorted(p.stem for p in keys_dir.glob("*.json")) if keys_dir.is_dir() else []
        raise DeployError(
            f"{path} does not exist: {agent!r} has no key (l9 deploy env makes one per agent; "
            f"keys in {keys_dir}: {', '.join(have) or 'none'})"
        )
    try:
        signer = Ed25519Signer.from_key_file(path)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
    if agent_of_key(signer.key_id) != agent:
        raise DeployError(f"{path} holds the key {signer.key_id!r}, which is not {agent}'s ({agent}.k<time>)")
    return signer


def public_keys(env: Mapping[str, str], env_path: Path, *, required: bool = True) -> dict[str, str]:
    """``L9_PUBLIC_KEYS`` of an ``.env``: key id -> hex public key."""
    raw = env.get("L9_PUBLIC_KEYS")
    if not raw:
        if required:
            raise DeployError(f"{env_path} has no L9_PUBLIC_KEYS: run l9 deploy env first")
        return {}
    try:
        keys = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DeployError(f"{env_path}: L9_PUBLIC_KEYS is not JSON ({exc})") from None
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise DeployError(f"{env_path}: L9_PUBLIC_KEYS must be a JSON object of key id -> hex public key")
    return {str(k): v for k, v in keys.items()}


def _keys_json(keys: Mapping[str, str]) -> str:
    return json.dumps(dict(keys), sort_keys=True, separators=(",", ":"))


def _new_agent_key(agent: str, taken: Collection[str], now: datetime | None = None) -> Ed25519Signer:
    key_id = f"{agent}.{new_key_id(now)}"
    if key_id in taken:
        raise DeployError(f"key id {key_id!r} exists already: try again in a second")
    try:
        return Ed25519Signer.generate(key_id)
    except ValueError as exc:  # an agent name a key id cannot hold
        raise DeployError(f"agent {agent!r}: {exc}") from None


def _agent_key(
    keys_dir: Path, agent: str, trusted: Collection[str], done: dict[str, str], now: datetime | None
) -> Ed25519Signer:
    """The agent's key; created (never replacing a file) when it has none."""
    path = agent_key_path(keys_dir, agent)
    if path.exists():
        return read_agent_key(keys_dir, agent)
    signer = _new_agent_key(agent, trusted, now)
    _private_folder(keys_dir)
    _write_atomic(path, signer.key_file_text(), 0o644, exclusive=True)
    done[str(path)] = f"created ({signer.key_id})"
    return signer


def _trust(trusted: Mapping[str, str], keys: Iterable[Ed25519Signer], env_path: Path) -> dict[str, str]:
    """``trusted`` with ``keys`` added; an id already trusted must have the same public key."""
    out = dict(trusted)
    for key in keys:
        if out.setdefault(key.key_id, key.public_hex) != key.public_hex:
            raise DeployError(
                f"{env_path}: L9_PUBLIC_KEYS has another public key for {key.key_id!r} than its key "
                "file: restore the key file, or remove the entry from L9_PUBLIC_KEYS"
            )
    return out


def agent_keys(env_path: Path, keys_dir: Path) -> list[TrustedKey]:
    """Every key of ``L9_PUBLIC_KEYS``, by key id: whose, and whether it is the one signing."""
    trusted = public_keys(read_env(env_path), env_path)
    signing: dict[str, str | None] = {}
    for agent in {agent_of_key(key_id) for key_id in trusted}:
        present = agent_key_path(keys_dir, agent).exists()
        signing[agent] = read_agent_key(keys_dir, agent).key_id if present else None
    return [TrustedKey(k, agent_of_key(k), signing[agent_of_key(k)] == k) for k in sorted(trusted)]


def rotate_agent_key(
    env_path: Path, keys_dir: Path, agent: str, now: datetime | None = None
) -> tuple[str, str]:
    """A new key for ``agent``; its old public key stays trusted. (old key id, new key id)

    ``L9_PUBLIC_KEYS`` is written before the key file: stopped in between, the deployment
    trusts a key nobody signs with yet, never the reverse.
    """
    old = read_agent_key(keys_dir, agent)
    trusted = public_keys(read_env(env_path), env_path)
    new = _new_agent_key(agent, {*trusted, old.key_id}, now)
    write_env(env_path, {"L9_PUBLIC_KEYS": _keys_json(_trust(trusted, [old, new], env_path))})
    _private_folder(keys_dir)
    _write_atomic(agent_key_path(keys_dir, agent), new.key_file_text(), 0o644)
    return old.key_id, new.key_id


def retire_agent_key(env_path: Path, keys_dir: Path, key_id: str) -> list[str]:
    """Stop trusting an old key (envelopes it signed no longer verify); the key ids left."""
    trusted = public_keys(read_env(env_path), env_path)
    if key_id not in trusted:
        raise DeployError(
            f"L9_PUBLIC_KEYS of {env_path} has no key {key_id!r} (it has: {', '.join(sorted(trusted))})"
        )
    agent = agent_of_key(key_id)
    if agent_key_path(keys_dir, agent).exists() and read_agent_key(keys_dir, agent).key_id == key_id:
        raise DeployError(
            f"{key_id!r} is the key {agent} signs with now ({agent_key_path(keys_dir, agent)}): "
            f"rotate it first (l9 deploy rotate-agent-key {agent})"
        )
    del trusted[key_id]
    write_env(env_path, {"L9_PUBLIC_KEYS": _keys_json(trusted)})
    return sorted(trusted)


def anchor_key(env_path: Path, out: Path, anchor: str, now: datetime | None = None) -> str:
    """A new signing key for a governance anchor (a person: ``l9 governance approve --key-file``),
    written to ``out`` (mode 0600, never replacing a file) and trusted in ``L9_PUBLIC_KEYS``, so
    the enforcer accepts that anchor's approvals; returns its key id. Again with another ``out``:
    a rotation (retire the old key with ``retire-agent-key``)."""
    if out.exists():
        raise DeployError(f"{out} exists: an anchor key is never overwritten (choose another --out)")
    trusted = public_keys(read_env(env_path), env_path)
    key = _new_agent_key(anchor, trusted, now)
    write_env(env_path, {"L9_PUBLIC_KEYS": _keys_json(_trust(trusted, [key], env_path))})
    _write_atomic(out, key.key_file_text(), 0o600, exclusive=True)
    return key.key_id


# -- the agents' Redis passwords --------------------------------------------------------------------
def rotate_redis_password(passwords_path: Path, agent: str) -> None:
    """A new password for ``agent`` in the passwords file (then: l9 acl render, l9 deploy env)."""
    passwords = read_passwords(passwords_path)
    if agent not in passwords:
        raise DeployError(
            f"{passwords_path} has no agent {agent!r} (there are: {', '.join(sorted(passwords))})"
        )
    passwords[agent] = secrets.token_urlsafe(24)
    _write_atomic(passwords_path, json.dumps(passwords, indent=2, sort_keys=True) + "\n", 0o600)
