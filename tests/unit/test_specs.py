"""The production compose file and the AsyncAPI document, against the official schemas
(vendored in tests/data: the Compose Specification schema as shipped in Debian's
docker-compose 1.29 package, and @asyncapi/specs 6.11 ``3.0.0-without-$id``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from envelope import registry
from l9.asyncapi import build_document, load_payload_modules
from tests.conftest import ROOT

DATA = Path(__file__).resolve().parents[1] / "data"


def _errors(schema_file: str, document: Any, validator: type[jsonschema.protocols.Validator]) -> list[str]:
    schema = json.loads((DATA / schema_file).read_text())
    return [f"{list(e.path)}: {e.message}" for e in validator(schema).iter_errors(document)]


def test_the_compose_file_is_a_valid_compose_document() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert _errors("compose-spec.schema.json", compose, jsonschema.Draft201909Validator) == []
    services = compose["services"]
    assert {"redis", "postgres", "squarer", "summer", "auditor"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    auditor = services["auditor"]
    assert auditor["command"] == ["agent", "run", "auditor"]
    assert auditor["environment"]["L9_AUDIT_KEY_FILE"] == "/run/secrets/audit_key"
    assert auditor["environment"]["REDIS_URL"].startswith("redis://")  # the shared settings merged in
    # the schema itself catches mistakes: a misspelt key is refused
    broken = {**compose, "services": {**services, "summer": {**services["summer"], "comand": "x"}}}
    assert any(
        "comand" in e for e in _errors("compose-spec.schema.json", broken, jsonschema.Draft201909Validator)
    )


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    env = {"L9_SIGNING_KEYS": '{"prod": "x"}', "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


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
    assert document["channels"]["demo_tasks"]["address"] == "l9:{demo.tasks}"
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
