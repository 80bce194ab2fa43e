"""An unusable policy file is one line naming the file and the problem: from the loader, and from
every command that reads it (``l9 governance check``, ``l9 acl render``, ``l9 agent run ...``) -
never a traceback. No server is needed: the file is refused before anything connects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from governance import PolicyFileError, load_policy_file, parse_policy_text

ROOT = Path(__file__).resolve().parents[2]


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    binary = tmp_path / "policy.yaml"
    binary.write_bytes(b"version: 1\n\xff\xfe")
    with pytest.raises(
        PolicyFileError, match=r"policy\.yaml: the policy file is not UTF-8 text \(.* at byte 11\)"
    ):
        load_policy_file(binary)
    with pytest.raises(PolicyFileError, match=r"cannot read the policy file: Is a directory"):
        load_policy_file(tmp_path)


def test_a_rule_refusing_its_params_is_located_at_them() -> None:
    text = "policies:\n  - id: p@1\n    rule: secrets\n    params:\n      allow_values: ['(']\n"
    with pytest.raises(PolicyFileError) as err:
        parse_policy_text(text, "p.yaml")
    assert str(err.value).startswith("p.yaml:5: policies.0.params: bad regular expression '('")


BAD_FILES = {
    "bad-id.yaml": (
        "policies:\n  - id: bad\n    rule: secrets\n",
        "bad-id.yaml:2: policies.0.id: policy id 'bad'",
    ),
    "broken.yaml": ("anchors: [\n", "broken.yaml:2: not valid YAML"),
    "missing.yaml": (None, "missing.yaml: cannot read the policy file: No such file or directory"),
}
CASES = [
    (("governance", "check"), "missing.yaml"),
    (("acl", "render"), "bad-id.yaml"),
    (("agent", "run", "planner"), "bad-id.yaml"),
    (("agent", "run", "planner"), "broken.yaml"),
    (("agent", "run", "enforcer"), "missing.yaml"),
]


@pytest.mark.parametrize(("command", "name"), CASES, ids=[f"{' '.join(c)}-{n}" for c, n in CASES])
def test_every_command_reports_a_bad_policy_file_in_one_line(
    tmp_path: Path, command: tuple[str, ...], name: str
) -> None:
    text, expected = BAD_FILES[name]
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    env = {
        **os.environ,
        "L9_POLICY_FILE": str(path),
        "L9_HOME": str(tmp_path / "home"),
        "REDIS_URL": "redis://127.0.0.1:9/0",  # nothing listens: the file must be refused first
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "COLUMNS": "60",  # a narrow terminal must not wrap the line
    }
    done = subprocess.run(
        [sys.executable, "-m", "l9", *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {path.parent}/{expected}"), lines[0]
    assert "Traceback" not in done.stdout + done.stderr
