"""The auditor's reporter against the real Redis and Postgres: a run published as the agents
publish it (signed, caused, in its correlation id) ends with its signed report on disk and an
``l9.report.ready.v1``; failed runs say what failed; redelivery renders the same bytes and the
same notice; a report taken by a reporter that died is rendered by another."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agents.auditor.report import CURRENT_VERSION, parse_report
from agents.auditor.reporter import (
    GROUP,
    Reporter,
    ReportNotReady,
    auditor_behind,
    notice_id,
    report_name,
)
from agents.extraction import RunCompleted
from bus import Delivery, Keys, Publisher, as_text
from bus.connection import RedisClient
from bus.topology import RUN_STREAM
from envelope import PacketEnvelope, Signer, Verifier, decode
from memory.postgres import EntryFilter, PostgresAuditStore, SigningKey, writer_dsn
from tests.conftest import KEYRING, AgentProcess, run_l9, stream_entries, wait_for
from tests.fake_pipeline import SAMPLE, downstream, locked_of, planner_steps, publish_steps, request_for

pytestmark = pytest.mark.integration


@pytest.fixture
def env(agent_env: dict[str, str], admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    """The agents' environment on a fresh trail, with an audit key the test can trust."""
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    return {
        **agent_env,
        "DATABASE_URL": admin_dsn,
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
    }


@pytest.fixture
async def trail(admin_dsn: str, tmp_path: Path) -> AsyncIterator[PostgresAuditStore]:
    store = await PostgresAuditStore.open(writer_dsn(admin_dsn), checkpoint_dir=tmp_path / "checkpoints")
    yield store
    await store.close()


async def publish_run(publisher: Publisher, fail: str | None, out: Path) -> list[PacketEnvelope]:
    """A whole run (request, planner, generator, enforcer, validator) as the agents publish it."""
    request = request_for(SAMPLE, out)
    envelope = PacketEnvelope.new(
        type="l9.extract.request.v1",
        source="agent://cli/tester",
        data=request.model_dump(mode="json"),
        kind="request",
    )
    await publisher.publish(envelope)
    steps = await planner_steps(request, envelope.time)
    at, locked = locked_of(steps)
    steps += downstream(at, locked, str(out / locked.folder_name), fail=fail)
    return [envelope, *await publish_steps(publisher, envelope, steps)]


async def notices(redis: RedisClient, keys: Keys, run: str) -> list[PacketEnvelope]:
    found = []
    for _, fields in stream_entries(await redis.xrange(keys.stream("report"))):
        envelope, _ = decode(fields, Verifier(KEYRING))
        if envelope.correlation_id == run:
            found.append(envelope)
    return found


async def first_notice(redis: RedisClient, keys: Keys, run: str, timeout: float = 60) -> PacketEnvelope:
    await wait_for(lambda: notices(redis, keys, run), timeout=timeout, interval=0.1)
    return (await notices(redis, keys, run))[0]


def text_of(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


def both(md: Path) -> tuple[bytes, bytes]:
    """The bytes of a report's Markdown and JSON files."""
    return md.read_bytes(), md.with_suffix(".json").read_bytes()


def completion_of(envelopes: list[PacketEnvelope]) -> PacketEnvelope:
    (done,) = [e for e in envelopes if e.type == "l9.run.completed.v1"]
    return done


async def test_a_run_ends_with_its_signed_report_on_disk_and_a_notice(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    auditor = spawn("auditor", env=env)
    envelopes = await publish_run(Publisher(redis, keys, signer), "approved", tmp_path / "out")
    run, completion = envelopes[0].correlation_id, completion_of(envelopes)
    notice = await first_notice(redis, keys, run)
    assert notice.id == notice_id(completion.id) and notice.causation_id == completion.id
    assert notice.source.startswith("agent://reporter/auditor-reporter-")
    data = notice.data
    md_path = Path(env["L9_HOME"]) / "reports" / f"{run}.md"
    assert (data["run"], data["result"], data["path"]) == (run, "passed", str(md_path.resolve()))
    json_path = md_path.with_name(f"{run}.json")
    for path in (md_path, json_path):
        stamp = parse_report(path.read_text()).stamp
        assert (stamp.digest, stamp.head_seq, stamp.sections_version) == (
            data["report_digest"],
            data["head_seq"],
            CURRENT_VERSION,
        )
        checked = run_l9("report", "verify", str(path), env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(json_path.read_text())
    assert report["outcome"]["status"] == "completed"
    for section in report["sections"]:
        assert section["records"] and section["facts"], f"section {section['number']} is empty"
    (who,) = [t for t in report["sections"][8]["facts"] if t["title"] == "Escalations and who decided"]
    assert who["rows"][0][5:7] == ["approved", "Igor"]
    # every record of the run but the notice itself is in the report
    assert report["declaration"]["entries"] == len(envelopes)
    assert auditor.terminate() == 0


async def test_a_failed_run_gets_a_report_saying_what_failed(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    spawn("auditor", env=env)
    publisher = Publisher(redis, keys, signer)
    denied = await publish_run(publisher, "enforce", tmp_path / "out")
    failing = await publish_run(publisher, "validate", tmp_path / "out")
    for envelopes, why in (
        (denied, ["decision.outcome = 'deny'", "allowed = False", "os.system() runs a shell"]),
        (failing, ["ok = False", "assert 0.5 == 0.73", "line coverage 72.2% (at least 85%)"]),
    ):
        run = envelopes[0].correlation_id
        notice = await first_notice(redis, keys, run)
        assert notice.data["result"] == "failed"
        md = text_of(notice.data["path"])
        assert "**Outcome: failed**" in md and "What failed:" in md
        for text in why:
            assert text in md
        checked = run_l9("report", "verify", notice.data["path"], env=env)
        assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_redelivery_renders_the_same_bytes_and_the_same_notice(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    env: dict[str, str],
    trail: PostgresAuditStore,
    tmp_path: Path,
) -> None:
    spawn("auditor", env=env)
    publisher = Publisher(redis, keys, signer)
    envelopes = await publish_run(publisher, None, tmp_path / "out")
    run, completion = envelopes[0].correlation_id, completion_of(envelopes)
    first = await first_notice(redis, keys, run)
    md = Path(first.data["path"])
    before = both(md)

    # the same completion delivered again, to another reporter (as after a crash before the ack)
    key = SigningKey.from_private_bytes(bytes.fromhex(text_of(env["L9_AUDIT_KEY_FILE"])))
    again = Reporter(redis, keys, trail, publisher, key, md.parent, "agent://reporter/reporter-9")
    payload = RunCompleted.model_validate(completion.data)
    await again.handle(Delivery(RUN_STREAM, "0-1", completion, payload, attempt=2, raw={}))
    assert both(md) == before
    second = (await notices(redis, keys, run))[-1]
    assert second.id == first.id and second.data == first.data

    async def one_notice_in_trail() -> bool:
        page = await trail.entries_after(0, filters=EntryFilter(type_glob="l9.report.*", correlation_id=run))
        return len(page.entries) == 1 and page.entries[0].envelope_id == first.id

    await wait_for(one_notice_in_trail, timeout=120)


async def test_a_report_taken_by_a_reporter_that_died_is_rendered_by_another(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    spawn: Callable[..., AgentProcess],
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    publisher = Publisher(redis, keys, signer)
    await redis.xgroup_create(keys.stream(RUN_STREAM), GROUP, id="0", mkstream=True)
    envelopes = await publish_run(publisher, "validate", tmp_path / "out")
    run = envelopes[0].correlation_id
    # a reporter took the completion and died before its ack (no heartbeat: it is gone)
    taken = await redis.xreadgroup(GROUP, "reporter-7", {keys.stream(RUN_STREAM): ">"})
    assert len(taken[0][1]) == 1  # type: ignore[index]
    spawn("auditor", env=env)
    notice = await first_notice(redis, keys, run)
    assert notice.data["result"] == "failed" and "**Outcome: failed**" in text_of(notice.data["path"])
    await wait_for(lambda: _acked(redis, keys), timeout=60)


async def _acked(redis: RedisClient, keys: Keys) -> bool:
    return int((await redis.xpending(keys.stream(RUN_STREAM), GROUP))["pending"]) == 0


async def test_no_report_before_the_completion_is_in_the_trail(
    redis: RedisClient, keys: Keys, signer: Signer, trail: PostgresAuditStore, tmp_path: Path
) -> None:
    publisher = Publisher(redis, keys, signer)
    envelopes = await publish_run(publisher, None, tmp_path / "out")
    completion = completion_of(envelopes)
    reporter = Reporter(
        redis,
        keys,
        trail,
        publisher,
        SigningKey.generate(),
        tmp_path / "reports",
        "agent://reporter/reporter-0",
        commit_timeout_s=0.3,
    )
    payload = RunCompleted.model_validate(completion.data)
    with pytest.raises(ReportNotReady, match=r"is not in the audit trail after 0\.3 s"):
        await reporter.handle(Delivery(RUN_STREAM, "0-1", completion, payload, attempt=1, raw={}))
    assert not (tmp_path / "reports").exists()
    # the auditor group has not read anything published before the completion yet
    ((last, _),) = stream_entries(await redis.xrevrange(keys.stream(RUN_STREAM), count=1))
    entry_id = as_text(last)
    assert "plan" in await auditor_behind(redis, keys, entry_id)


def test_report_names_are_safe_file_names() -> None:
    assert report_name("01a1fdc5-1372-71b2-a36b-dac252d92794") == "01a1fdc5-1372-71b2-a36b-dac252d92794"
    for odd in ("../../etc/passwd", "a/b", "", ".hidden", "x" * 200):
        name = report_name(odd)
        assert name.startswith("run-") and "/" not in name and len(name) == 36
    assert notice_id("a") == notice_id("a") != notice_id("b")
