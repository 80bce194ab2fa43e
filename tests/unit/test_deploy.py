"""``l9 deploy``: the compose deployment's .env and audit key, made once, then rotated."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from l9.deploy import (
    DeployError,
    password_variable,
    prepare_env,
    read_env,
    retire_signing_key,
    rotate_audit_key,
    rotate_redis_password,
    rotate_signing_key,
    write_env,
)
from memory.postgres import SigningKey

PASSWORDS = {"sympy": "s-pw_1", "planner": "p.pw~2", "graph-projector": "g-pw"}


@pytest.fixture
def deployment(tmp_path: Path) -> tuple[Path, Path, Path]:
    passwords = tmp_path / ".l9" / "redis-passwords.json"
    passwords.parent.mkdir()
    passwords.write_text(json.dumps(PASSWORDS))
    return tmp_path / ".env", passwords, tmp_path / "secrets" / "audit-key.hex"


def test_prepare_creates_every_secret_once_and_keeps_them(deployment: tuple[Path, Path, Path]) -> None:
    env_path, passwords, key = deployment
    done = prepare_env(env_path, passwords, key)
    env = read_env(env_path)
    assert {"POSTGRES_PASSWORD", "NEO4J_PASSWORD", "REDIS_ADMIN_PASSWORD", "L9_SIGNING_KEY_ID"} <= set(env)
    assert list(json.loads(env["L9_SIGNING_KEYS"])) == [env["L9_SIGNING_KEY_ID"]]
    assert env["L9_REDIS_PASSWORD_SYMPY"] == "s-pw_1" and env["L9_REDIS_PASSWORD_GRAPH_PROJECTOR"] == "g-pw"
    assert done[str(key)] == "created" and len(bytes.fromhex(key.read_text().strip())) == 32
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    before, seed = env_path.read_text(), key.read_text()
    assert prepare_env(env_path, passwords, key) == {}
    assert (env_path.read_text(), key.read_text()) == (before, seed)


def test_the_agents_passwords_follow_the_passwords_file(deployment: tuple[Path, Path, Path]) -> None:
    env_path, passwords, key = deployment
    env_path.write_text("# mine\nPOSTGRES_PASSWORD=chosen\nOTHER='kept'\n")
    prepare_env(env_path, passwords, key)
    rotate_redis_password(passwords, "sympy")
    new = json.loads(passwords.read_text())["sympy"]
    assert new != "s-pw_1" and stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert prepare_env(env_path, passwords, key) == {"L9_REDIS_PASSWORD_SYMPY": "updated"}
    env = read_env(env_path)
    assert (env["L9_REDIS_PASSWORD_SYMPY"], env["POSTGRES_PASSWORD"], env["OTHER"]) == (new, "chosen", "kept")
    assert env_path.read_text().startswith("# mine\nPOSTGRES_PASSWORD=chosen\n")
    with pytest.raises(DeployError, match="no agent 'nobody'"):
        rotate_redis_password(passwords, "nobody")


def test_without_rendered_users_or_with_unusable_passwords_it_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"l9 acl render"):
        prepare_env(tmp_path / ".env", tmp_path / "none.json", tmp_path / "key.hex")
    bad = tmp_path / "pw.json"
    bad.write_text(json.dumps({"sympy": "a@b:c"}))
    with pytest.raises(DeployError, match="password of 'sympy' has characters a Redis URL cannot hold"):
        prepare_env(tmp_path / ".env", bad, tmp_path / "key.hex")
    assert not (tmp_path / ".env").exists()


def test_signing_keys_rotate_then_retire(deployment: tuple[Path, Path, Path]) -> None:
    env_path, passwords, key = deployment
    prepare_env(env_path, passwords, key)
    first = read_env(env_path)["L9_SIGNING_KEY_ID"]
    assert rotate_signing_key(env_path, "k2") == ("k2", [first])
    env = read_env(env_path)
    assert env["L9_SIGNING_KEY_ID"] == "k2" and set(json.loads(env["L9_SIGNING_KEYS"])) == {first, "k2"}
    with pytest.raises(DeployError, match="is the key that signs now"):
        retire_signing_key(env_path, "k2")
    with pytest.raises(DeployError, match="already exists"):
        rotate_signing_key(env_path, first)
    assert retire_signing_key(env_path, first) == ["k2"]
    with pytest.raises(DeployError, match=f"no signing key '{first}'"):
        retire_signing_key(env_path, first)


def test_the_old_audit_key_stays_trusted(deployment: tuple[Path, Path, Path]) -> None:
    env_path, passwords, key = deployment
    prepare_env(env_path, passwords, key)
    old = SigningKey.from_private_bytes(bytes.fromhex(key.read_text().strip()))
    old_id, new_id = rotate_audit_key(env_path, key)
    new = SigningKey.from_private_bytes(bytes.fromhex(key.read_text().strip()))
    assert (old_id, new_id) == (old.key_id, new.key_id) and old_id != new_id
    assert json.loads(read_env(env_path)["L9_AUDIT_TRUSTED_KEYS"]) == {old.key_id: old.public_bytes.hex()}
    rotate_audit_key(env_path, key)
    assert set(json.loads(read_env(env_path)["L9_AUDIT_TRUSTED_KEYS"])) == {old.key_id, new.key_id}


def test_values_that_would_break_the_env_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="X: a value"):
        write_env(tmp_path / ".env", {"X": "it's"})
    assert password_variable("graph.projector-2") == "L9_REDIS_PASSWORD_GRAPH_PROJECTOR_2"
