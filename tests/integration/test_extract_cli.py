"""``l9 extract`` as a subprocess against the real Redis and Postgres, the real auditor
process rendering the report, and a stand-in for the planner, generator, enforcer and
validator answering the request with the real payloads of every phase (signed, caused,
in the run's correlation id): exit 0 on a passed run, 1 on a failed one, 2 on a file with
schema errors (every error listed, nothing published), 3 when no agent answers."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.extraction import ExtractRequest, PlanLocked
from bus import Keys, Publisher, as_text
from bus.connection import RedisClient
from bus.deadletter import DeadLetters
from envelope import Signer, Verifier, decode
from memory.postgres import SigningKey
from tests.conftest import KEYRING, ROOT, AgentProcess, run_l9, stream_entries
from tests.fake_pipeline import SAMPLE, downstream, locked_of, planner_steps, publish_steps

pytestmark = pytest.mark.integration

BROKEN = ROOT / "examples" / "broken"


@pytest.fixture
def env(agent_env: dict[str, str], admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    return {
        **agent_env,
        "DATABASE_URL": admin_dsn,
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "COLUMNS": "250",
    }


async def answer_requests(redis: RedisClient, keys: Keys, signer: Signer, fail: str | None) -> None:
    """The pipeline's stand-in: answers the first extraction request with a whole run."""
    while True:
        replies: Any = await redis.xread({keys.stream("extract"): "0-0"}, block=200)
        for _, entries in replies or []:
            envelope, request = decode(entries[0][1], Verifier(KEYRING))
            assert isinstance(request, ExtractRequest)
            steps = await planner_steps(request, envelope.time)
            if any(isinstance(s.payload, PlanLocked) for s in steps):
                at, locked = locked_of(steps)
                folder = str(Path(request.out_dir or "/nowhere") / locked.folder_name)
                steps += downstream(at, locked, folder, fail=fail)
            await publish_steps(Publisher(redis, keys, signer), envelope, steps)
            return


async def extract_with(
    args: tuple[str, ...], env: dict[str, str], answer: Callable[[], Any] | None
) -> subprocess.CompletedProcess[str]:
    """``l9 extract ARGS`` while ``answer`` plays the pipeline."""
    done: list[subprocess.CompletedProcess[str]] = []

    async def command() -> None:
        done.append(await anyio.to_thread.run_sync(lambda: run_l9("extract", *args, env=env, timeout=120)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(command)
        if answer is not None:
            await answer()
    return done[0]


def home_of(env: dict[str, str]) -> Path:
    return Path(env["L9_HOME"]).resolve()


def text_of(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def reported(stdout: str) -> str:
    found = re.search(r"evidence report: (\S+\.md)", stdout)
    assert found is not None, stdout
    return found.group(1)


async def test_a_passed_run_exits_0_with_the_folder_and_the_verified_report(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    spawn("auditor", env=env)
    out = tmp_path / "out"
    done = await extract_with(
        (str(SAMPLE), "--out", str(out)), env, lambda: answer_requests(redis, keys, signer, "approved")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run = re.search(r"run (\S+): passed", done.stdout)
    assert run is not None, done.stdout
    assert re.search(
        rf"extraction folder: {re.escape(str(out))}/tensoraios_ecosystem_\d{{8}}T\d{{6}}Z", done.stdout
    )
    report = reported(done.stdout)
    assert report == str(home_of(env) / "reports" / f"{run.group(1)}.md")
    for phase in ("plan", "generate", "enforce", "validate", "report"):
        assert re.search(rf"│ {phase} +│ \S+ +│ done", done.stdout), done.stdout
    for agent in ("tensoraios", "main_agent", "plastos_adapter", "tensor_trainer", "tensor_auditor"):
        assert re.search(rf"│ +{agent} +│ +│ +│ +│ wave \d: \d+ files", done.stdout), done.stdout
    assert "escalation approved by Igor" in done.stdout, done.stdout
    checked = run_l9("report", "verify", report, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_failed_run_exits_1_and_json_lines_follow_every_phase(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    spawn("auditor", env=env)
    done = await extract_with(
        (str(SAMPLE), "--out", str(tmp_path), "--json"),
        env,
        lambda: answer_requests(redis, keys, signer, "validate"),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    events, (result,) = lines[:-1], lines[-1:]
    assert {e["phase"] for e in events} == {"plan", "generate", "enforce", "validate", "report"}
    assert events[-1]["type"] == "l9.report.ready.v1"
    assert all(e["run"] == result["run"] for e in events)
    assert (result["event"], result["result"], result["phase"]) == ("result", "failed", "validate")
    assert result["reason"] == "1 failing test; line coverage 72.2% (at least 85%)"
    assert result["folder"].startswith(str(tmp_path))
    md = text_of(result["report"])
    assert "**Outcome: failed**" in md and "assert 0.5 == 0.73" in md


@pytest.mark.parametrize("name", ["duplicate_agent.yaml", "malformed.md", "unknown_dependency.md"])
async def test_a_file_with_schema_errors_exits_2_listing_each_and_publishes_nothing(
    redis: RedisClient, keys: Keys, env: dict[str, str], name: str
) -> None:
    done = run_l9("extract", str(BROKEN / name), env=env)
    assert done.returncode == 2
    listed = [line.strip() for line in done.stderr.splitlines() if line.startswith("  ")]
    assert len(listed) == 2 and all(line.startswith(name) for line in listed), done.stderr
    assert "2 errors in the schema collection" in done.stderr and "nothing was published" in done.stderr
    assert await redis.xlen(keys.stream("extract")) == 0


async def test_no_wait_prints_the_run_and_the_request_carries_folder_and_requester(
    redis: RedisClient, keys: Keys, env: dict[str, str]
) -> None:
    done = run_l9("extract", str(SAMPLE), "--no-wait", env={**env, "L9_REQUESTER": "alice@lab"})
    assert done.returncode == 0, done.stderr
    run = done.stdout.strip()
    ((_, fields),) = stream_entries(await redis.xrange(keys.stream("extract")))
    envelope, request = decode(fields, Verifier(KEYRING))
    assert isinstance(request, ExtractRequest)
    assert envelope.correlation_id == run == envelope.id and envelope.kind == "request"
    assert (request.requester, request.out_dir) == ("alice@lab", str(ROOT / "extractions"))
    assert request.text == SAMPLE.read_text() and request.file == str(SAMPLE)
    # --no-check sends even a broken file: the planner will judge it and the run gets a report
    sent = run_l9("extract", str(BROKEN / "malformed.md"), "--no-check", "--no-wait", env=env)
    assert sent.returncode == 0 and await redis.xlen(keys.stream("extract")) == 2


def test_with_no_agent_running_it_says_where_it_is_stuck(env: dict[str, str]) -> None:
    done = run_l9("extract", str(SAMPLE), "--timeout", "1.5", env=env)
    assert done.returncode == 3, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert (
        "nothing happened for 1.5 s: the run is stuck at phase plan (waiting for planner on stream extract)"
        in (message)
    )
    for group in ("planner (stream extract)", "generator (stream plan)", "validator (stream enforce)"):
        assert group in message
    lines = run_l9("extract", str(SAMPLE), "--timeout", "1", "--json", env=env)
    assert lines.returncode == 3
    result = json.loads(lines.stdout.splitlines()[-1])
    assert (result["result"], result["phase"]) == ("stuck", "plan")


async def test_an_envelope_of_the_run_dead_lettered_ends_the_wait_at_once_naming_it(
    redis: RedisClient, keys: Keys, signer: Signer, env: dict[str, str]
) -> None:
    """The planner's stand-in locks the plan; the generator's group gives up on it (as the
    delivery loop does after its last attempt): nothing will end the run, and l9 extract says
    so, with the reason, instead of waiting for its timeout."""

    async def give_up() -> None:
        while True:
            replies: Any = await redis.xread({keys.stream("extract"): "0-0"}, block=200)
            for _, entries in replies or []:
                envelope, request = decode(entries[0][1], Verifier(KEYRING))
                assert isinstance(request, ExtractRequest)
                published = await publish_steps(
                    Publisher(redis, keys, signer), envelope, await planner_steps(request, envelope.time)
                )
                locked = next(e for e in published if e.type == "l9.plan.locked.v1")
                found: Any = await redis.xrange(keys.stream("plan"))
                entry_id, fields = next((i, f) for i, f in found if f[b"id"] == locked.id.encode())
                await redis.xgroup_create(keys.stream("plan"), "generator", id="0")
                letters = DeadLetters(redis, keys, "generator", "generator-0")
                await letters.letter("plan", as_text(entry_id), fields, "delivery_cap", "KeyError: 'x'", 5)
                return

    done = await extract_with((str(SAMPLE), "--timeout", "300"), env, give_up)
    assert done.returncode == 3, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "the generator gave up on l9.plan.locked.v1 (envelope " in message, message
    assert "after 5 deliveries: delivery_cap: KeyError: 'x'; nothing will end this run" in message
    assert "`l9 dead list plan`" in message
