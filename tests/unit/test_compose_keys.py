"""The envelope signing keys of docker-compose.yml: one Ed25519 key per agent, mounted into that
agent's containers only (standalone and ``cluster`` profile alike), every public key in
``L9_PUBLIC_KEYS`` of every service.

Checked on the file itself, then on the deployment as docker-compose 1.29 renders it
(``config``) after ``l9 acl render`` and ``l9 deploy env``, before and after a rotation.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from envelope import Ed25519Signer, PacketEnvelope, agent_of_key, to_wire_map
from l9.deploy import CLI_SIGNER
from l9.settings import Settings
from tests.unit.test_compose_cluster import AGENTS, DOCKER_COMPOSE, _deployed, needs_compose
from tests.unit.test_specs import _compose, _l9, agent_services

TOOLS = ("l9", "l9-cluster")
KEY_TARGET = "agent_key"
KEY_FILE = f"/run/secrets/{KEY_TARGET}"


def _signer_of(name: str, service: dict[str, Any]) -> str | None:
    """Whose key a service should hold: its agent's, ``cli`` for the tools, else nobody's."""
    if service.get("command", [])[:2] == ["agent", "run"]:
        return str(service["command"][2])
    return CLI_SIGNER if name in TOOLS else None


def _key_secrets(service: dict[str, Any], secrets: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's secrets that are agent key files (``secrets/agent-keys/...``)."""
    entries = [s if isinstance(s, dict) else {"source": s} for s in service.get("secrets", [])]
    return [s for s in entries if "/secrets/agent-keys/" in secrets[s["source"]]["file"]]


def test_every_agent_service_has_its_own_key_as_a_secret() -> None:
    compose = _compose()
    assert "L9_SIGNING_KEYS" not in json.dumps(compose) and "L9_SIGNING_KEY_ID" not in json.dumps(compose)
    secrets = compose["secrets"]
    for profile in (None, "cluster"):
        services = agent_services(compose, profile)
        assert set(services) == AGENTS, profile
        for agent, service in services.items():
            assert _key_secrets(service, secrets) == [{"source": f"{agent}_key", "target": KEY_TARGET}]
            assert secrets[f"{agent}_key"] == {"file": f"./secrets/agent-keys/{agent}.json"}
            env = service["environment"]
            assert env["L9_SIGNING_SCHEME"] == "ed25519" and env["L9_SIGNING_KEY_FILE"] == KEY_FILE
            assert env["L9_PUBLIC_KEYS"] == "${L9_PUBLIC_KEYS:?run l9 deploy env}"
    for name, service in compose["services"].items():
        want = _signer_of(name, service)
        found = [s["source"] for s in _key_secrets(service, secrets)]
        assert found == ([f"{want}_key"] if want else []), name  # nobody holds another's key
    assert {s for s in secrets if s.endswith("_key") and s != "audit_key"} == {
        f"{a}_key" for a in AGENTS | {CLI_SIGNER}
    }


def _render(project: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(DOCKER_COMPOSE), "--profile", "cluster", "--profile", "tools", "config"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def _mounted_keys(rendered: dict[str, Any]) -> dict[str, Path]:
    """Service -> the key file it mounts at /run/secrets/agent_key; only one key file each."""
    out = {}
    for name, service in rendered["services"].items():
        keys = _key_secrets(service, rendered["secrets"])
        want = _signer_of(name, service)
        assert len(keys) == (1 if want else 0), (name, keys)
        for volume in service.get("volumes", []):  # nor through a volume
            assert "agent-keys" not in volume.split(":")[0], (name, volume)
        if keys:
            assert keys[0]["target"] == KEY_TARGET, name
            out[name] = Path(rendered["secrets"][keys[0]["source"]]["file"])
    return out


@needs_compose
def test_the_rendered_deployment_has_one_key_per_agent(tmp_path: Path) -> None:
    project = _deployed(tmp_path)
    rendered = _render(project)
    mounted = _mounted_keys(rendered)
    signers = {name: Ed25519Signer.from_key_file(path) for name, path in mounted.items()}
    for name, signer in signers.items():
        assert agent_of_key(signer.key_id) == _signer_of(name, rendered["services"][name]), name
    for agent in AGENTS:  # the twins on the cluster share the agent's one key
        assert mounted[agent] == mounted[f"{agent}-cluster"] == project / f"secrets/agent-keys/{agent}.json"
    assert mounted["l9"] == mounted["l9-cluster"] == project / "secrets/agent-keys/cli.json"
    by_agent = {agent_of_key(s.key_id): s for s in signers.values()}
    assert set(by_agent) == AGENTS | {CLI_SIGNER}
    assert len({s.public_hex for s in by_agent.values()}) == len(by_agent)  # distinct keys
    assert set(mounted.values()) == set((project / "secrets/agent-keys").iterdir())  # all used
    public = {s.key_id: s.public_hex for s in by_agent.values()}
    for name in mounted:
        env = rendered["services"][name]["environment"]
        assert json.loads(env["L9_PUBLIC_KEYS"]) == public, name
        assert (env["L9_SIGNING_SCHEME"], env["L9_SIGNING_KEY_FILE"]) == ("ed25519", KEY_FILE), name
        assert "L9_SIGNING_KEYS" not in env, name
    keys_dir = project / "secrets/agent-keys"
    # the tools services see this folder at /work; the key files in it are not theirs to read:
    # the folder is the host user's, mode 0700, and the container's user is another
    assert stat.S_IMODE(keys_dir.stat().st_mode) == stat.S_IMODE(keys_dir.parent.stat().st_mode) == 0o700


def _settings_of(service: dict[str, Any], key_file: Path) -> Settings:
    """The signing settings the service's process reads, its secret at the host path."""
    env = service["environment"]
    return Settings(
        signing_scheme=env["L9_SIGNING_SCHEME"], signing_key_file=key_file, public_keys=env["L9_PUBLIC_KEYS"]
    )


@needs_compose
def test_each_agent_signs_as_itself_and_every_other_accepts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _deployed(tmp_path)
    rendered = _render(project)
    mounted = _mounted_keys(rendered)
    for name in ("L9_SIGNING_KEYS", "L9_SIGNING_KEY_ID", "L9_SIGNING_SCHEME", "L9_PUBLIC_KEYS"):
        monkeypatch.delenv(name, raising=False)  # only what the compose file gives
    settings = {n: _settings_of(rendered["services"][n], f) for n, f in mounted.items()}
    for name, own in settings.items():
        signer = own.signer()
        assert agent_of_key(signer.key_id) == _signer_of(name, rendered["services"][name])
        fields = to_wire_map(PacketEnvelope.new(type="l9.test.ping.v1", source=f"agent://{name}/0", data={}))
        signer.sign(fields)
        for other in ("planner", "sympy-cluster", "l9"):
            settings[other].verifier().verify(fields)


@needs_compose
def test_a_rotation_reaches_the_rendered_deployment(tmp_path: Path) -> None:
    project = _deployed(tmp_path)
    before = _mounted_keys(_render(project))
    old = {n: Ed25519Signer.from_key_file(f) for n, f in before.items()}
    rotated = _l9(project, "deploy", "rotate-agent-key", "sympy")
    assert rotated.returncode == 0, rotated.stderr
    listed = _l9(project, "deploy", "agent-keys", "sympy", "--old")
    assert listed.stdout.split() == [old["sympy"].key_id], listed.stderr
    rendered = _render(project)
    new = {n: Ed25519Signer.from_key_file(f) for n, f in _mounted_keys(rendered).items()}
    assert new["sympy"].key_id != old["sympy"].key_id == old["sympy-cluster"].key_id
    assert new["sympy-cluster"].key_id == new["sympy"].key_id
    assert all(new[n].key_id == old[n].key_id for n in new if not n.startswith("sympy"))
    trusted = json.loads(rendered["services"]["planner"]["environment"]["L9_PUBLIC_KEYS"])
    assert trusted[old["sympy"].key_id] == old["sympy"].public_hex  # still verifies what it signed
    assert trusted[new["sympy"].key_id] == new["sympy"].public_hex
    refused = _l9(project, "deploy", "retire-agent-key", new["sympy"].key_id)
    assert refused.returncode == 1 and "rotate it first" in refused.stderr
    retired = _l9(project, "deploy", "retire-agent-key", old["sympy"].key_id)
    assert retired.returncode == 0, retired.stderr
    trusted = json.loads(_render(project)["services"]["lineage-cluster"]["environment"]["L9_PUBLIC_KEYS"])
    assert old["sympy"].key_id not in trusted and new["sympy"].key_id in trusted
    assert _l9(project, "deploy", "agent-keys", "--old").stdout == ""
