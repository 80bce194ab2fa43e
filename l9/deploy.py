"""The secrets of the compose deployment: ``.env`` and ``secrets/``, made and rotated.

``docker-compose.yml`` reads every secret from ``.env`` (next to it) and the
audit key from ``secrets/audit-key.hex``. :func:`prepare_env` creates what is
missing and never changes what exists, except the agents' Redis passwords,
which always follow ``L9_HOME/redis-passwords.json`` (kept by ``l9 acl render``).

Rotation keeps what is needed to check old work:

* signing keys: the new key signs, the old ones stay in ``L9_SIGNING_KEYS`` so
  envelopes already on the streams still verify, until retired;
* the audit key: the new seed signs checkpoints and reports, the old public key
  joins ``L9_AUDIT_TRUSTED_KEYS`` so earlier checkpoints still verify;
* an agent's Redis password: a new one in the passwords file (render the ACL
  file again, then :func:`prepare_env`).

Values are written single-quoted (literal for both Compose v1 and v2, no ``$``
interpolation); the files are written atomically, ``.env`` readable by its
owner only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from dotenv import dotenv_values

from memory.postgres import SigningKey

#: Secrets generated once and then kept.
GENERATED = ("POSTGRES_PASSWORD", "NEO4J_PASSWORD", "REDIS_ADMIN_PASSWORD")
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


def write_env(path: Path, updates: Mapping[str, str]) -> None:
    """Set ``updates`` in ``path``: lines of those variables replaced in place, new ones appended."""
    for name, value in updates.items():
        if "'" in value or "\n" in value:
            raise DeployError(f"{name}: a value in {path} may not hold a quote or a line break")
    lines = path.read_text().splitlines() if path.exists() else []
    todo = dict(updates)
    for i, line in enumerate(lines):
        found = ENV_LINE.match(line)
        if found and found.group(1) in todo:
            lines[i] = f"{found.group(1)}='{todo.pop(found.group(1))}'"
    lines += [f"{name}='{value}'" for name, value in todo.items()]
    _write_atomic(path, "\n".join(lines) + "\n", 0o600)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


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


def prepare_env(env_path: Path, passwords_path: Path, audit_key_path: Path) -> dict[str, str]:
    """Create what the compose file needs and is missing; ``{variable or file: what was done}``."""
    current, updates, done = read_env(env_path), {}, {}
    for name in GENERATED:
        if not current.get(name):
            updates[name], done[name] = secrets.token_urlsafe(24), "created"
    if not current.get("L9_SIGNING_KEYS"):
        key_id = new_key_id()
        updates["L9_SIGNING_KEYS"] = json.dumps({key_id: secrets.token_hex(32)})
        updates["L9_SIGNING_KEY_ID"] = key_id
        done["L9_SIGNING_KEYS"] = done["L9_SIGNING_KEY_ID"] = "created"
    for agent, password in sorted(read_passwords(passwords_path).items()):
        name = password_variable(agent)
        if current.get(name) != password:
            updates[name], done[name] = password, "updated" if name in current else "created"
    if updates:
        write_env(env_path, updates)
    if not audit_key_path.exists():
        write_audit_key(audit_key_path, secrets.token_hex(32))
        done[str(audit_key_path)] = "created"
    return done


def write_audit_key(path: Path, seed_hex: str) -> None:
    """The audit key file: its folder private (0700), the file readable by the container's user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    _write_atomic(path, seed_hex + "\n", 0o644)


def signing_keys(env: Mapping[str, str], env_path: Path) -> dict[str, str]:
    raw = env.get("L9_SIGNING_KEYS")
    if not raw:
        raise DeployError(f"{env_path} has no L9_SIGNING_KEYS: run l9 deploy env first")
    try:
        keys = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DeployError(f"{env_path}: L9_SIGNING_KEYS is not JSON ({exc})") from None
    if not isinstance(keys, dict) or not keys:
        raise DeployError(f"{env_path}: L9_SIGNING_KEYS must be a JSON object of key id -> secret")
    return {str(k): str(v) for k, v in keys.items()}


def rotate_signing_key(env_path: Path, key_id: str | None = None) -> tuple[str, list[str]]:
    """A new signing key that signs from now on; the old ones stay to verify. (new id, kept ids)"""
    env = read_env(env_path)
    keys = signing_keys(env, env_path)
    key_id = key_id or new_key_id()
    if key_id in keys:
        raise DeployError(f"signing key {key_id!r} already exists in {env_path}")
    kept = sorted(keys)
    keys[key_id] = secrets.token_hex(32)
    write_env(env_path, {"L9_SIGNING_KEYS": json.dumps(keys), "L9_SIGNING_KEY_ID": key_id})
    return key_id, kept


def retire_signing_key(env_path: Path, key_id: str) -> list[str]:
    """Remove an old signing key (envelopes it signed no longer verify); the ids left."""
    env = read_env(env_path)
    keys = signing_keys(env, env_path)
    if key_id not in keys:
        raise DeployError(f"no signing key {key_id!r} in {env_path} (there are: {', '.join(sorted(keys))})")
    if env.get("L9_SIGNING_KEY_ID") == key_id:
        raise DeployError(f"{key_id!r} is the key that signs now (L9_SIGNING_KEY_ID): rotate first")
    del keys[key_id]
    write_env(env_path, {"L9_SIGNING_KEYS": json.dumps(keys)})
    return sorted(keys)


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


def rotate_redis_password(passwords_path: Path, agent: str) -> None:
    """A new password for ``agent`` in the passwords file (then: l9 acl render, l9 deploy env)."""
    passwords = read_passwords(passwords_path)
    if agent not in passwords:
        raise DeployError(
            f"{passwords_path} has no agent {agent!r} (there are: {', '.join(sorted(passwords))})"
        )
    passwords[agent] = secrets.token_urlsafe(24)
    _write_atomic(passwords_path, json.dumps(passwords, indent=2, sort_keys=True) + "\n", 0o600)
