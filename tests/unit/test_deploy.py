"""``l9 deploy``: the compose deployment's .env, audit key and agent keys, made once, then rotated."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from envelope import Ed25519Signer, EnvelopeError, PacketEnvelope, Verifier, agent_of_key, to_wire_map
from l9.deploy import (
    CLI_SIGNER,
    DeployError,
    TrustedKey,
    agent_key_path,
    agent_keys,
    password_variable,
    prepare_env,
    read_env,
    retire_agent_key,
    rotate_agent_key,
    rotate_audit_key,
    rotate_redis_password,
    write_env,
)
from memory.postgres import SigningKey

PASSWORDS = {"sympy": "s-pw_1", "planner": "p.pw~2", "graph-projector": "g-pw"}
SIGNERS = {"sympy", "planner", "graph-projector", CLI_SIGNER}
T0, T1 = (datetime(2026, 12, 7, 14, 15, s, tzinfo=UTC) for s in (0, 1))


class Deployment:
    """The files ``l9 deploy`` works on, as laid out next to docker-compose.yml."""

    def __init__(self, root: Path) -> None:
        self.env = root / ".env"
        self.passwords = root / ".l9" / "redis-passwords.json"
        self.audit_key = root / "secrets" / "audit-key.hex"
        self.keys = root / "secrets" / "agent-keys"
        self.passwords.parent.mkdir()
        self.passwords.write_text(json.dumps(PASSWORDS))

    def prepare(self, now: datetime | None = None) -> dict[str, str]:
        return prepare_env(self.env, self.passwords, self.audit_key, self.keys, now)

    def key_file(self, agent: str) -> Path:
        return agent_key_path(self.keys, agent)

    def key(self, agent: str) -> Ed25519Signer:
        return Ed25519Signer.from_key_file(self.key_file(agent))

    def trusted(self) -> dict[str, str]:
        return dict(json.loads(read_env(self.env)["L9_PUBLIC_KEYS"]))

    def verifier(self) -> Verifier:
        """What every service of the deployment checks signatures with."""
        return Verifier({}, public_keys={k: bytes.fromhex(v) for k, v in self.trusted().items()})


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return Deployment(tmp_path)


def _signed_by(signer: Ed25519Signer) -> dict[str, object]:
    fields = to_wire_map(PacketEnvelope.new(type="l9.test.ping.v1", source="agent://t/0", data={}))
    signer.sign(fields)
    return fields


def test_prepare_creates_every_secret_once_and_keeps_them(deployment: Deployment) -> None:
    done = deployment.prepare()
    env = read_env(deployment.env)
    assert {"POSTGRES_PASSWORD", "NEO4J_PASSWORD", "REDIS_ADMIN_PASSWORD", "L9_PUBLIC_KEYS"} <= set(env)
    assert env["L9_SIGNING_SCHEME"] == "ed25519" and "L9_SIGNING_KEYS" not in env
    assert env["L9_REDIS_PASSWORD_SYMPY"] == "s-pw_1" and env["L9_REDIS_PASSWORD_GRAPH_PROJECTOR"] == "g-pw"
    key = deployment.audit_key
    assert done[str(key)] == "created" and len(bytes.fromhex(key.read_text().strip())) == 32
    assert stat.S_IMODE(deployment.env.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    before, seed = deployment.env.read_text(), key.read_text()
    assert deployment.prepare() == {}
    assert (deployment.env.read_text(), key.read_text()) == (before, seed)


def test_prepare_gives_every_agent_and_the_cli_a_key_of_its_own(deployment: Deployment) -> None:
    done = deployment.prepare()
    assert {p.name for p in deployment.keys.iterdir()} == {f"{a}.json" for a in SIGNERS}
    keys = {a: deployment.key(a) for a in SIGNERS}
    for agent, key in keys.items():
        assert agent_of_key(key.key_id) == agent and key.key_id.startswith(f"{agent}.k")
        assert done[str(deployment.key_file(agent))] == f"created ({key.key_id})"
        # readable through the bind mount by the container's user, who is not the file's
        # owner; the folders (0700) keep the host's other users out
        assert stat.S_IMODE(deployment.key_file(agent).stat().st_mode) == 0o644
    assert stat.S_IMODE(deployment.keys.stat().st_mode) == 0o700
    assert stat.S_IMODE(deployment.keys.parent.stat().st_mode) == 0o700
    assert len({k.public_hex for k in keys.values()}) == len(SIGNERS)
    assert deployment.trusted() == {k.key_id: k.public_hex for k in keys.values()}
    verifier = deployment.verifier()
    for key in keys.values():
        verifier.verify(_signed_by(key))  # what each signs, every service accepts
    texts = {a: deployment.key_file(a).read_text() for a in SIGNERS}
    assert deployment.prepare() == {}
    assert {a: deployment.key_file(a).read_text() for a in SIGNERS} == texts  # never replaced


def test_an_env_with_the_shared_keyring_loses_it(deployment: Deployment) -> None:
    deployment.env.write_text(
        "POSTGRES_PASSWORD='chosen'\nL9_SIGNING_KEYS='{\"k1\": \"secret\"}'\nexport L9_SIGNING_KEY_ID=k1\n"
    )
    done = deployment.prepare()
    assert done["L9_SIGNING_KEYS"].startswith("removed") and done["L9_SIGNING_KEY_ID"].startswith("removed")
    env = read_env(deployment.env)
    assert "L9_SIGNING_KEYS" not in env and "L9_SIGNING_KEY_ID" not in env
    assert env["POSTGRES_PASSWORD"] == "chosen" and env["L9_SIGNING_SCHEME"] == "ed25519"
    assert "secret" not in deployment.env.read_text()


def test_a_lost_key_file_is_made_again_and_its_old_key_stays_trusted(deployment: Deployment) -> None:
    deployment.prepare(T0)
    lost = deployment.key("sympy")
    deployment.key_file("sympy").unlink()
    with pytest.raises(DeployError, match=r"'sympy\.k20261207141500' exists already: try again in a second"):
        deployment.prepare(T0)
    assert not deployment.key_file("sympy").exists()
    done = deployment.prepare(T1)
    new = deployment.key("sympy")
    assert new.key_id == "sympy.k20261207141501"
    assert done == {str(deployment.key_file("sympy")): f"created ({new.key_id})", "L9_PUBLIC_KEYS": "updated"}
    assert deployment.trusted()[lost.key_id] == lost.public_hex
    assert deployment.trusted()[new.key_id] == new.public_hex


def test_a_key_file_that_disagrees_with_the_env_is_refused(deployment: Deployment) -> None:
    deployment.prepare(T0)
    planner = deployment.key_file("planner")
    planner.write_text(Ed25519Signer.generate("planner.k20261207141500").key_file_text())  # same id
    with pytest.raises(DeployError, match=r"another public key for 'planner\.k20261207141500'"):
        deployment.prepare()
    planner.write_text(Ed25519Signer.generate("sympy.k1").key_file_text())
    with pytest.raises(DeployError, match=r"planner\.json holds the key 'sympy\.k1', which is not planner's"):
        deployment.prepare()
    planner.write_text("{}")
    with pytest.raises(DeployError, match=r"signing key file .*planner\.json"):
        deployment.prepare()


def test_rotation_keeps_the_old_key_trusted_until_it_is_retired(deployment: Deployment) -> None:
    deployment.prepare(T0)
    old = deployment.key("sympy")
    others = {a: deployment.key_file(a).read_text() for a in SIGNERS - {"sympy"}}
    on_the_stream = _signed_by(old)
    rotated = rotate_agent_key(deployment.env, deployment.keys, "sympy", T1)
    assert rotated == (old.key_id, "sympy.k20261207141501")
    new = deployment.key("sympy")
    assert new.key_id == "sympy.k20261207141501" and new.public_hex != old.public_hex
    assert stat.S_IMODE(deployment.key_file("sympy").stat().st_mode) == 0o644
    assert {a: deployment.key_file(a).read_text() for a in SIGNERS - {"sympy"}} == others
    trusted = deployment.trusted()
    assert (trusted[old.key_id], trusted[new.key_id]) == (old.public_hex, new.public_hex)
    deployment.verifier().verify(on_the_stream)  # signed before: still verifies
    deployment.verifier().verify(_signed_by(new))
    assert deployment.prepare() == {}  # the rotated deployment is complete as it is
    listed = [k for k in agent_keys(deployment.env, deployment.keys) if k.agent == "sympy"]
    assert listed == [TrustedKey(old.key_id, "sympy", False), TrustedKey(new.key_id, "sympy", True)]

    with pytest.raises(DeployError, match=r"is the key sympy signs with now .*rotate-agent-key sympy"):
        retire_agent_key(deployment.env, deployment.keys, new.key_id)
    with pytest.raises(DeployError, match="exists already"):
        rotate_agent_key(deployment.env, deployment.keys, "sympy", T1)
    left = retire_agent_key(deployment.env, deployment.keys, old.key_id)
    assert old.key_id not in left and new.key_id in left and left == sorted(deployment.trusted())
    with pytest.raises(EnvelopeError, match="unknown signing key id"):
        deployment.verifier().verify(on_the_stream)
    with pytest.raises(DeployError, match=re.escape(f"has no key '{old.key_id}'")):
        retire_agent_key(deployment.env, deployment.keys, old.key_id)
    assert deployment.prepare() == {}  # a retired key is not brought back


def test_rotating_needs_the_agent_s_key_and_the_env(deployment: Deployment, tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"nobody\.json does not exist: 'nobody' has no key"):
        rotate_agent_key(deployment.env, deployment.keys, "nobody")
    deployment.prepare(T0)
    with pytest.raises(DeployError, match="has no key"):
        rotate_agent_key(deployment.env, deployment.keys, "nobody")
    with pytest.raises(DeployError, match="no L9_PUBLIC_KEYS: run l9 deploy env first"):
        rotate_agent_key(tmp_path / "other.env", deployment.keys, "sympy", T1)
    with pytest.raises(DeployError, match="no L9_PUBLIC_KEYS: run l9 deploy env first"):
        agent_keys(tmp_path / "other.env", deployment.keys)


def test_an_agent_name_a_key_id_cannot_hold_is_refused(deployment: Deployment) -> None:
    deployment.passwords.write_text(json.dumps({"graph.projector": "pw"}))
    with pytest.raises(DeployError, match=r"agent 'graph\.projector': key id"):
        deployment.prepare()


def test_the_agents_passwords_follow_the_passwords_file(deployment: Deployment) -> None:
    env_path, passwords = deployment.env, deployment.passwords
    env_path.write_text("# mine\nPOSTGRES_PASSWORD=chosen\nOTHER='kept'\n")
    deployment.prepare()
    rotate_redis_password(passwords, "sympy")
    new = json.loads(passwords.read_text())["sympy"]
    assert new != "s-pw_1" and stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert deployment.prepare() == {"L9_REDIS_PASSWORD_SYMPY": "updated"}
    env = read_env(env_path)
    assert (env["L9_REDIS_PASSWORD_SYMPY"], env["POSTGRES_PASSWORD"], env["OTHER"]) == (new, "chosen", "kept")
    assert env_path.read_text().startswith("# mine\nPOSTGRES_PASSWORD=chosen\n")
    with pytest.raises(DeployError, match="no agent 'nobody'"):
        rotate_redis_password(passwords, "nobody")


def test_without_rendered_users_or_with_unusable_passwords_it_says_what_to_do(tmp_path: Path) -> None:
    keys = tmp_path / "agent-keys"
    with pytest.raises(DeployError, match=r"l9 acl render"):
        prepare_env(tmp_path / ".env", tmp_path / "none.json", tmp_path / "key.hex", keys)
    bad = tmp_path / "pw.json"
    bad.write_text(json.dumps({"sympy": "a@b:c"}))
    with pytest.raises(DeployError, match="password of 'sympy' has characters a Redis URL cannot hold"):
        prepare_env(tmp_path / ".env", bad, tmp_path / "key.hex", keys)
    assert not (tmp_path / ".env").exists() and not keys.exists()


def test_the_old_audit_key_stays_trusted(deployment: Deployment) -> None:
    env_path, key = deployment.env, deployment.audit_key
    deployment.prepare()
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
