"""A "passed" that can be trusted, on the real stack: every agent its own process, ``l9 extract``.

With strict mode off (so an unresolvable entry is dropped, and listed), one pipeline runs:

* a collection whose agent plans its own ``*_manifest.json``, a kernel of one symbol and two
  kernels that overflow or cancel as written (``log(exp(x) + exp(y))``, ``(1 + erf(x))/2``)
  passes: the manifest is rendered, the one-symbol kernel's tests pass, the stable forms
  agree with the high-precision reference, and the dropped entry is printed and reported;
* the same with a kernel that cancels at 1e4 and has no stable form fails at validate, the
  command printing the failing point, and section 10 of the report says failed;
* a typo (``max(x, y)``) is refused by the local check with a hint; sent anyway, the SymPy
  worker's refusal of the generator's request ends the run at generate, as a denial in the
  run's trail, with no escalation left waiting for an anchor.

And the enforcer, in-process on the real Redis: an exception while enforcing ends the run.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents import Runtime
from agents.extraction import GenerationCompleted, RunCompleted
from agents.extraction.enforcer import EnforcerAgent
from agents.extraction.enforcer import agent as enforcer_module
from bus import Delivery, Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, Verifier, decode_envelope
from governance import Escalations, PolicyEngine
from memory.postgres import SigningKey
from tests.conftest import AgentProcess, run_l9, wait_for
from tests.unit.test_extraction_passed import CANCELLING, NUMERICS

pytestmark = pytest.mark.integration

#: NUMERICS with a document no convention gives a kind: dropped (strict mode off), and listed.
WITH_DROPPED = NUMERICS.replace(
    "streams:\n", "  generatedocs: [README.md, PERFORMANCE_NOTES.md]\nstreams:\n", 1
)
TYPO = NUMERICS + '  peak: "max(x, y)"\n'


@pytest.fixture
def env(agent_env: dict[str, str], admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    return {
        **agent_env,
        "DATABASE_URL": admin_dsn,
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "L9_STRICT_MODE": "false",
        "COLUMNS": "250",
    }


def extract(path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = str(path.parent / "out")
    return run_l9("extract", str(path), "--out", out, *args, "--timeout", "300", env=env, timeout=600)


def report_of(stdout: str) -> dict[str, Any]:
    found = re.search(r"evidence report: (\S+\.md)", stdout)
    assert found is not None, stdout
    data: dict[str, Any] = json.loads(Path(found.group(1)).with_suffix(".json").read_text())
    return data


def facts(report: dict[str, Any], number: int) -> dict[str, dict[str, Any]]:
    return {t["title"]: t for t in report["sections"][number - 1].get("facts", [])}


async def test_the_pipeline_passes_what_is_right_and_fails_what_is_not_on_the_record(
    spawn: Callable[..., AgentProcess], env: dict[str, str], tmp_path: Path, redis: RedisClient, keys: Keys
) -> None:
    for name in ("planner", "generator", "enforcer", "validator", "auditor", "sympy"):
        spawn(name, env=env)
    (tmp_path / "numerics.yaml").write_text(WITH_DROPPED)
    done = extract(tmp_path / "numerics.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "strict mode is off: 1 entries left out of the plan" in done.stderr
    assert "left out of the plan (strict mode off, 1 entries):" in done.stdout
    assert "PERFORMANCE_NOTES.md" in done.stdout
    passed = report_of(done.stdout)
    assert passed["outcome"]["status"] == "completed" and passed["sections_version"] == 3
    dropped = [t for title, t in facts(passed, 2).items() if title.startswith("Left out of the plan")]
    assert [row[3] for row in dropped[0]["rows"]] == ["PERFORMANCE_NOTES.md"]
    folder = Path(re.findall(r"extraction folder: (\S+)", done.stdout)[0])
    own = json.loads((folder / "code/L9/core/numerics/numerics_manifest.json").read_text())
    assert "code/L9/core/numerics/kernels.py" in [f["path"] for f in own["files"]]
    kernels = (folder / "code/L9/core/numerics/kernels.py").read_text()
    assert "numpy.logaddexp(x, y)" in kernels and "math.erfc" in kernels

    (tmp_path / "cancelling.yaml").write_text(CANCELLING)
    failed = extract(tmp_path / "cancelling.yaml", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert re.search(r"run \S+: failed at phase validate", failed.stdout), failed.stdout
    assert "(x=10000.0) gives 5.0000000555" in failed.stdout, failed.stdout
    report = report_of(failed.stdout)
    assert report["outcome"]["status"] == "failed"
    assert any(f["type"] == "l9.validation.tests.v1" for f in report["outcome"]["failures"])
    failures = [row[2] for row in facts(report, 7)["Failures"]["rows"]]
    assert len(failures) == 1 and "asinh_gap" in failures[0]

    (tmp_path / "typo.yaml").write_text(TYPO)
    refused = extract(tmp_path / "typo.yaml", env=env)
    assert refused.returncode == 2 and "(did you mean Max?)" in refused.stderr, refused.stderr
    sent = extract(tmp_path / "typo.yaml", "--no-check", "--json", env=env)
    assert sent.returncode == 1, sent.stdout + sent.stderr
    result = json.loads(sent.stdout.splitlines()[-1])
    assert (result["result"], result["phase"]) == ("failed", "generate")
    assert any("kernel 'peak' (max(x, y)): the SymPy tool refused it" in p for p in result["problems"])
    report = json.loads(Path(result["report"]).with_suffix(".json").read_text())
    decisions = facts(report, 6)["Decisions"]["rows"]
    denied = [row for row in decisions if row[2] == "deny"]
    assert len(denied) == 1 and denied[0][3] == "sympy-dangerous-functions@1"
    assert "a run's own input" in denied[0][4]
    assert not facts(report, 9).get("Escalations and who decided")
    engine = PolicyEngine.load()
    desk = Escalations(
        redis,
        Publisher(redis, keys, None),
        spec=engine.escalation,
        anchors=engine.anchors,
        source="agent://test/test-0",
    )
    assert await desk.pending() == [], "nothing waits for an anchor"


async def test_an_exception_while_enforcing_ends_the_run(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(enforcer_module, "verdict_of", crash)
    runtime = Runtime(
        redis=redis, keys=keys, signer=signer, verifier=verifier, agent="enforcer", instance="e-0"
    )
    agent = EnforcerAgent(runtime, poll_s=0.05)
    generated = GenerationCompleted(
        outcome="generated",
        collection="demo",
        plan_hash="a" * 64,
        folder=str(tmp_path),
        files=(),
        manifest_sha256="b" * 64,
    )
    cause = PacketEnvelope.new(
        type="l9.generate.completed.v1",
        source="agent://generator/g-0",
        data=generated.model_dump(mode="json"),
    )
    for _ in range(2):  # a redelivery publishes the very same envelope, once more at most
        await agent.handle(Delivery("generate", "1-0", cause, generated, 1, {}))

    async def ended() -> list[PacketEnvelope]:
        found: Any = await redis.xrange(keys.stream("run"))
        return [e for e in (decode_envelope(f, verifier) for _, f in found) if e.correlation_id == cause.id]

    await wait_for(ended, timeout=60)
    runs = await ended()
    assert len({e.id for e in runs}) == 1 and runs[0].causation_id == cause.id
    run = RunCompleted.model_validate(runs[0].data)
    assert (run.result, run.phase, run.folder) == ("failed", "enforce", str(tmp_path))
    assert run.reason.startswith("the enforcer failed: RecursionError: maximum recursion depth exceeded")
