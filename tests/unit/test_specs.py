"""The production compose file and the AsyncAPI document, against the official schemas
(vendored in tests/data: the Compose Specification schema as shipped in Debian's
docker-compose 1.29 package, and @asyncapi/specs 6.11 ``3.0.0-without-$id``)."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml

import l9.cli.agent
from agents.runner import BUILTIN
from bus import Keys
from envelope import registry
from governance import load_policy_file
from l9.asyncapi import build_document, load_payload_modules
from tests.conftest import ROOT
from tests.doctools.compose_shim import COMPOSE_TOOLS

DOCKER_COMPOSE = COMPOSE_TOOLS / "docker-compose"

DATA = Path(__file__).resolve().parents[1] / "data"


def _errors(schema_file: str, document: Any, validator: type[jsonschema.protocols.Validator]) -> list[str]:
    schema = json.loads((DATA / schema_file).read_text())
    return [f"{list(e.path)}: {e.message}" for e in validator(schema).iter_errors(document)]


def _compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def known_agents() -> set[str]:
    """What ``l9 agent run NAME`` runs: the built-in agents and the processes it starts itself."""
    special = re.findall(r'if name == "([a-z_]+)"', inspect.getsource(l9.cli.agent))
    return set(BUILTIN) | set(special)


def agent_services(compose: dict[str, Any], profile: str | None = None) -> dict[str, dict[str, Any]]:
    """Services whose command is ``agent run NAME``, by agent name: those of the default deployment
    (no profile), or those of ``profile`` (``cluster``: tests/unit/test_compose_cluster.py)."""
    return {
        svc["command"][2]: svc
        for svc in compose["services"].values()
        if svc.get("command", [])[:2] == ["agent", "run"]
        and svc.get("profiles", []) == ([profile] if profile else [])
    }


def test_the_compose_file_is_a_valid_compose_document() -> None:
    compose = _compose()
    assert _errors("compose-spec.schema.json", compose, jsonschema.Draft201909Validator) == []
    assert "name" not in compose  # docker-compose 1.29 refuses a top-level name
    services = compose["services"]
    assert set(agent_services(compose)) == {
        "planner", "generator", "enforcer", "validator", "auditor", "sympy", "lineage",
    }  # fmt: skip
    assert {"redis", "postgres", "neo4j"} <= set(services)
    # the schema itself catches mistakes: a misspelt key is refused
    broken = {**compose, "services": {**services, "planner": {**services["planner"], "comand": "x"}}}
    assert any(
        "comand" in e for e in _errors("compose-spec.schema.json", broken, jsonschema.Draft201909Validator)
    )


def test_every_agent_service_runs_a_known_agent_with_its_health_check_and_redis_user() -> None:
    compose = _compose()
    known = known_agents()
    for name, svc in agent_services(compose).items():
        assert name in known, f"service runs 'l9 agent run {name}', which is not an agent ({sorted(known)})"
        env = svc["environment"]
        assert "127.0.0.1:9464/healthz" in " ".join(svc["healthcheck"]["test"]), name  # its admin port
        assert env["L9_ADMIN_PORT"] == "9464", name
        user, password = f"l9-{name}", f"${{L9_REDIS_PASSWORD_{name.upper()}:?run l9 deploy env}}"
        assert env["REDIS_URL"] == f"redis://{user}:{password}@redis:6379/0", name
        assert env["DATABASE_URL"].startswith("postgresql://") and env["NEO4J_URL"].startswith("bolt://")
        assert {k for k, v in svc["depends_on"].items() if v == {"condition": "service_healthy"}} >= {
            "redis", "postgres", "neo4j",
        }, name  # fmt: skip
    services = compose["services"]
    assert services["generator"]["depends_on"]["sympy"] == {"condition": "service_healthy"}
    assert services["sympy"]["deploy"]["replicas"] == 3 and services["auditor"]["deploy"]["replicas"] == 2
    users = load_policy_file(ROOT / "deploy/identity.yaml").identity.redis_users
    assert set(users) == set(agent_services(compose)), "every agent service has a Redis user, and only they"


def test_redis_keeps_an_aof_and_loads_the_rendered_acl_file() -> None:
    compose = _compose()
    redis = compose["services"]["redis"]
    assert redis["command"][:2] == ["--appendonly", "yes"]
    assert redis["entrypoint"] == ["sh", "/etc/l9/redis-entrypoint.sh"]
    assert "./deploy/redis-entrypoint.sh:/etc/l9/redis-entrypoint.sh:ro" in redis["volumes"]
    assert redis["secrets"] == ["redis_users"]  # /run/secrets/redis_users, the script's default
    assert "/run/secrets/redis_users" in (ROOT / "deploy/redis-entrypoint.sh").read_text()
    auditor = compose["services"]["auditor"]
    assert auditor["environment"]["L9_AUDIT_KEY_FILE"] == "/run/secrets/audit_key"
    assert auditor["secrets"] == ["audit_key", {"source": "auditor_key", "target": "agent_key"}]
    checkpoints = next(v for v in auditor["volumes"] if v.endswith(":/checkpoints"))
    assert checkpoints.split(":")[0] in compose["volumes"]
    assert checkpoints.split(":")[0] != compose["services"]["postgres"]["volumes"][0].split(":")[0]
    assert {"extractions", "audit-checkpoints", "pg-data", "redis-data"} <= set(compose["volumes"])


def test_the_acl_secret_is_the_file_l9_acl_render_writes_by_default(tmp_path: Path) -> None:
    done = _l9(tmp_path, "acl", "render")
    assert done.returncode == 0, done.stderr
    secret = _compose()["secrets"]["redis_users"]["file"]
    rendered = (tmp_path / secret).read_text()
    assert {line.split()[1] for line in rendered.splitlines()} == {
        f"l9-{name}" for name in agent_services(_compose())
    }


def _l9(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``l9 ARGS`` in ``cwd`` as an operator runs it there: L9_HOME unset (``./.l9``)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "L9_POLICY_FILE": str(ROOT / "deploy/identity.yaml"),
    }
    return subprocess.run(
        [sys.executable, "-m", "l9", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(
    not DOCKER_COMPOSE.exists(),
    reason=f"docker-compose 1.29 is not in {DOCKER_COMPOSE.parent}: `make test` installs it",
)
def test_docker_compose_config_accepts_the_file_with_the_env_l9_deploy_writes(tmp_path: Path) -> None:
    assert _l9(tmp_path, "acl", "render").returncode == 0
    deployed = _l9(tmp_path, "deploy", "env")
    assert deployed.returncode == 0, deployed.stderr
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    done = subprocess.run(
        [str(DOCKER_COMPOSE), "config"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    password = json.loads((tmp_path / ".l9/redis-passwords.json").read_text())["sympy"]
    sympy = resolved["services"]["sympy"]["environment"]
    assert sympy["REDIS_URL"] == f"redis://l9-sympy:{password}@redis:6379/0"
    assert (sympy["L9_SIGNING_SCHEME"], sympy["L9_SIGNING_KEY_FILE"]) == ("ed25519", "/run/secrets/agent_key")
    assert [k for k in json.loads(sympy["L9_PUBLIC_KEYS"]) if k.startswith("sympy.")] != []
    (tmp_path / ".env").unlink()
    missing = subprocess.run(
        [str(DOCKER_COMPOSE), "config", "-q"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "run l9 deploy env" in missing.stderr


def test_the_asyncapi_document_is_valid_and_lists_every_payload_type() -> None:
    load_payload_modules()
    document = build_document()
    assert _errors("asyncapi-3.0.0.schema.json", document, jsonschema.Draft7Validator) == []
    declared = set()
    for package in ("agents", "bus", "governance"):
        for path in (ROOT / package).rglob("*.py"):
            declared.update(re.findall(r'@payload\("([^"]+)"\)', path.read_text()))
    documented = {m["name"] for m in document["components"]["messages"].values()}
    assert declared <= documented, declared - documented
    assert documented == {t for t, _ in registry}
    task = document["components"]["messages"]["l9_demo_task_v1"]
    assert task["payload"]["properties"]["n"]["type"] == "integer"
    assert "l9_demo_task_v1" in document["channels"]["demo_tasks"]["messages"]
    assert document["channels"]["demo_tasks"]["address"] == Keys().stream("demo.tasks")
    assert {op["action"] for op in document["operations"].values()} == {"send", "receive"}


def test_l9_asyncapi_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    done = subprocess.run(
        [
            str(ROOT / ".venv/bin/l9") if (ROOT / ".venv/bin/l9").exists() else "l9",
            "asyncapi",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"L9_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text())
    assert document["asyncapi"] == "3.0.0" and "audit" in document["channels"]
