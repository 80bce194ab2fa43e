"""The evidence report engine against the real PostgreSQL trail: reports of runs published
as envelopes, verified, then tampered with in every way verification must name; and the
`l9 report` command as a subprocess."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agents.auditor.report import (
    EMPTY_SECTION,
    FORMATS,
    ChainPoint,
    NoRecordsError,
    Report,
    build_report,
    render,
    report_from_trail,
    sign_report,
    verify_report_text,
)
from envelope import PacketEnvelope, Signer
from l9.devstack import StackEndpoints
from memory.postgres import (
    AuditRecord,
    Checkpoint,
    Committed,
    PostgresAuditStore,
    SigningKey,
    migrate,
    redact,
)
from memory.postgres import writer_dsn as writer_of
from tests.conftest import KEYRING, ROOT, run_l9
from tests.integration.conftest import drop_database, new_database
from tests.unit.test_report import FULL_RUN, section_text

pytestmark = pytest.mark.integration

KEY = SigningKey.generate()
TRUSTED = KEY.trusted()
Spec = tuple[str, dict[str, Any], str]


def records(specs: Sequence[Spec], run: str) -> list[AuditRecord]:
    signer = Signer(KEYRING, "dev")
    out = []
    for type_, data, kind in specs:
        envelope = PacketEnvelope.new(
            type=type_, source="agent://planner/0", data=data, correlation_id=run, kind=kind
        )
        entry_id = f"{uuid.uuid4().int % 10**12}-0"
        out.append(AuditRecord.from_envelope(envelope, stream="t:audit", entry_id=entry_id, signer=signer))
    return out


async def publish(store: PostgresAuditStore, specs: Sequence[Spec], run: str) -> list[Committed]:
    committed = await store.append(records(specs, run))
    assert all(c.new for c in committed)
    return committed


async def full_run(store: PostgresAuditStore, run: str) -> list[Committed]:
    """The run's records, with records of another run in between (as on a busy trail)."""
    committed = []
    for at in range(0, len(FULL_RUN), 4):
        committed += await publish(store, FULL_RUN[at : at + 4], run)
        await publish(store, [("l9.plan.locked.v1", {"other": True}, "event")], f"{run}-other")
    return committed


async def check(store: PostgresAuditStore, text: str) -> tuple[str, ...]:
    return (await verify_report_text(store, text, TRUSTED)).problems


# -- building and verifying -------------------------------------------------------------------------


async def test_full_run_renders_every_section_and_verifies_in_both_formats(store: PostgresAuditStore) -> None:
    committed = await full_run(store, "run-a")
    report = await report_from_trail(store, "run-a", KEY)
    head = await store.head()
    assert report.declaration.head_seq == head.seq and report.declaration.entries == len(FULL_RUN)
    assert [len(s.records) for s in report.sections] == [2, 1, 1, 1, 1, 1, 1, 2, 2, 1]
    assert [r.type for r in report.appendix] == ["l9.sympy.result.v1"]
    assert report.outcome.status == "completed"
    assert report.outcome.completion_seqs == (committed[-1].seq,)
    md, js = render(report, "md"), render(report, "json")
    for number in range(1, 11):
        assert EMPTY_SECTION not in section_text(md, number)
    assert Report.model_validate_json(js) == report
    assert await check(store, md) == ()
    assert await check(store, js) == ()


async def test_failed_run_says_what_failed_and_empty_sections_say_so(store: PostgresAuditStore) -> None:
    run: list[Spec] = [
        ("l9.extract.request.v1", {"schema": "bad.yaml"}, "request"),
        ("l9.plan.rejected.v1", {"errors": ["agents.yaml:12 depends_on.hard: unknown agent 'x'"]}, "event"),
    ]
    committed = await publish(store, run, "run-bad")
    report = await report_from_trail(store, "run-bad", KEY)
    rejected = committed[1].seq
    assert report.outcome.status == "failed"
    assert report.outcome.statement.startswith(
        f"failed: 1 record(s) show a failure: seq {rejected} l9.plan.rejected.v1: its type marks a failure"
    )
    md = render(report, "md")
    assert "**Outcome: failed**" in md
    assert f"- seq {rejected} `l9.plan.rejected.v1` from `agent://planner/0`" in section_text(md, 10)
    assert "unknown agent 'x'" in section_text(md, 2)
    for number in range(3, 11):
        assert EMPTY_SECTION in section_text(md, number)
    assert await check(store, md) == ()


async def test_a_report_names_a_checkpoint_covering_every_record(store: PostgresAuditStore) -> None:
    await publish(store, FULL_RUN[:3], "run-c")
    assert await store.checkpoints() == []
    first = await report_from_trail(store, "run-c", KEY)
    (made,) = await store.checkpoints()
    assert (first.declaration.checkpoint_id, first.declaration.checkpoint_seq) == (made.id, made.seq)
    assert made.seq == first.declaration.head_seq == 3
    again = await report_from_trail(store, "run-c", KEY)
    assert len(await store.checkpoints()) == 1 and again.declaration.checkpoint_id == made.id
    await publish(store, FULL_RUN[3:4], "run-c")
    third = await report_from_trail(store, "run-c", KEY)
    assert [c.seq for c in await store.checkpoints()] == [3, 4]
    assert (third.declaration.checkpoint_id, third.declaration.head_seq) == (2, 4)


async def test_an_unknown_run_has_no_report_and_makes_no_checkpoint(store: PostgresAuditStore) -> None:
    await publish(store, FULL_RUN[:2], "run-d")
    with pytest.raises(NoRecordsError, match="no audit records for run nope"):
        await report_from_trail(store, "nope", KEY)
    assert await store.checkpoints() == []


async def test_a_later_record_of_the_run_leaves_the_earlier_report_valid(store: PostgresAuditStore) -> None:
    await publish(store, FULL_RUN[:5], "run-e")
    earlier = await report_from_trail(store, "run-e", KEY)
    await publish(store, FULL_RUN[5:], "run-e")
    for fmt in FORMATS:
        assert await check(store, render(earlier, fmt)) == ()
    later = await report_from_trail(store, "run-e", KEY)
    assert later.declaration.entries == len(FULL_RUN) and earlier.declaration.entries == 5
    assert earlier.outcome.status == "incomplete" and later.outcome.status == "completed"


# -- tampering --------------------------------------------------------------------------------------


async def test_edited_reports_fail_naming_the_section(store: PostgresAuditStore) -> None:
    await full_run(store, "run-f")
    report = await report_from_trail(store, "run-f", KEY)
    md, js = render(report, "md"), render(report, "json")
    (problem,) = await check(store, md.replace('`"a/config.py"`', '`"a/other.py"`'))
    assert problem.startswith("content: section 5 (Phase 2: implementation (files, line counts, hashes))")
    data = json.loads(js)
    data["sections"][6]["records"][0]["fields"]["coverage"] = "0.99"
    (problem,) = await check(store, json.dumps(data, sort_keys=True, indent=2))
    assert problem == (
        "content: section 7 (Phase 4: validation (tests, pass rate, coverage)) does not match the trail"
    )
    data = json.loads(js)
    data["outcome"]["status"] = "failed"
    (problem,) = await check(store, json.dumps(data))
    assert problem == "content: section 10 (Final declaration): the outcome does not match the trail"
    (problem,) = await check(store, md.replace("from the audit trail only", "from the agents' claims"))
    assert problem == "content: the file was edited outside the sections (line 3)"


async def test_a_forged_or_untrusted_signature_fails(store: PostgresAuditStore) -> None:
    await publish(store, FULL_RUN, "run-g")
    report = await report_from_trail(store, "run-g", KEY)
    signature = report.declaration.signature
    forged = signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    problems = await check(store, render(report, "json").replace(signature, forged))
    assert problems == (
        f"signature: the Ed25519 signature of the digest does not verify with key {KEY.key_id!r}",
    )
    # A whole report re-signed with another key: the content matches, the key is not trusted.
    impostor = SigningKey.generate()
    resigned = sign_report(report.with_signature("", "", ""), impostor)
    problems = await check(store, render(resigned, "md"))
    assert problems == (f"signature: key id {impostor.key_id!r} is not a trusted report key",)
    # A digest changed with the signature kept: the signature breaks.
    digest = report.declaration.digest
    problems = await check(store, render(report, "md").replace(digest, "0" * 64))
    assert problems[0].startswith("signature: the Ed25519 signature of the digest does not verify")


async def test_a_report_built_on_a_head_the_trail_does_not_have_fails(
    store: PostgresAuditStore, stack: StackEndpoints
) -> None:
    committed = await publish(store, FULL_RUN, "run-h")
    entries = await store.entries_for_correlation("run-h")
    fake_head = ChainPoint(999, bytes(range(32)))
    fake_checkpoint = Checkpoint.sign(
        KEY, id=1, seq=999, chain_hash=fake_head.chain_hash, created_at=datetime.now(UTC), previous=None
    )
    invented = sign_report(
        build_report(
            entries,
            run_id="run-h",
            generated_at=datetime.now(UTC),
            head=fake_head,
            checkpoint=fake_checkpoint,
        ),
        KEY,
    )
    problems = await check(store, render(invented, "md"))
    assert problems == (
        f"trail: the report is built on chain head seq 999, but the trail ends at seq {committed[-1].seq}: "
        "it was not built on this trail (or the trail lost entries)",
        "trail: checkpoint #1, named by the report, is not in the trail",
    )

    # The same run published to another trail after an unrelated record: other chain hashes.
    genuine = await report_from_trail(store, "run-h", KEY)
    other_url = await new_database(stack)
    try:
        await migrate(other_url)
        other = await PostgresAuditStore.open(writer_of(other_url))
        try:
            await publish(other, FULL_RUN[:1], "unrelated")
            await publish(other, FULL_RUN, "run-h")  # the same types and data, as new envelopes
            await other.make_checkpoint(KEY)
            problems = await check(other, render(genuine, "json"))
        finally:
            await other.close()
    finally:
        await drop_database(stack, other_url)
    head_seq = genuine.declaration.head_seq
    assert problems[0].startswith(f"trail: the chain hash at seq {head_seq} is ")
    assert problems[0].endswith("it was not built on this trail (or the trail was rewritten)")
    assert "trail: checkpoint #1 in the trail has digest" in problems[1]


async def test_a_redaction_after_the_report_is_found_and_a_new_report_shows_it(
    store: PostgresAuditStore, admin_dsn: str
) -> None:
    committed = await publish(store, FULL_RUN, "run-i")
    before = await report_from_trail(store, "run-i", KEY)
    artifact = next(c.seq for c in committed if c.record.type == "l9.artifact.generated.v1")
    await redact(admin_dsn, artifact, "contains a secret")
    (problem,) = await check(store, render(before, "md"))
    assert problem.startswith("content: section 5 (Phase 2: implementation")
    after = await report_from_trail(store, "run-i", KEY)
    (shown,) = after.sections[4].records
    assert shown.redacted and shown.summary == "(payload redacted)"
    assert after.declaration.redacted_seqs == (artifact,)
    assert f"seq {artifact}" in after.outcome.statement and "could not be examined" in after.outcome.statement
    assert await check(store, render(after, "md")) == ()


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
async def cli_env(admin_dsn: str, stack: StackEndpoints, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    yield {
        **os.environ,
        "DATABASE_URL": admin_dsn,
        "REDIS_URL": stack.redis_url,
        "L9_HOME": str(tmp_path / "home"),
        "L9_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }


l9 = run_l9


async def test_l9_report_and_verify_commands(
    store: PostgresAuditStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    await full_run(store, "run-cli")
    md_file = tmp_path / "run.md"
    made = l9("report", "run-cli", "--out", str(md_file), env=cli_env)
    assert made.returncode == 0, made.stderr
    assert f"report of run run-cli written to {md_file}: outcome completed" in made.stdout
    assert md_file.read_text().startswith("# Evidence report: run `run-cli`")
    ok = l9("report", "verify", str(md_file), env=cli_env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(f"OK: {md_file} (md) is the signed report of run run-cli")

    as_json = l9("report", "run-cli", "--format", "json", env=cli_env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["run_id"] == "run-cli"
    json_file = tmp_path / "run.json"
    json_file.write_text(as_json.stdout)
    assert l9("report", "verify", str(json_file), env=cli_env).returncode == 0

    md_file.write_text(md_file.read_text().replace('`"a/config.py"`', '`"evil.py"`'))
    bad = l9("report", "verify", str(md_file), env=cli_env)
    assert bad.returncode == 1
    assert bad.stdout.startswith("FAILED: content: section 5 (Phase 2: implementation")
    assert "does not verify against the trail (1 problem(s))" in bad.stderr

    stranger = l9("report", "verify", str(json_file), env={**cli_env, "L9_HOME": str(tmp_path / "other")})
    assert stranger.returncode == 1
    assert "is not a trusted report key" in stranger.stdout


def test_l9_report_command_errors(cli_env: dict[str, str], tmp_path: Path) -> None:
    unknown = l9("report", "nope", env=cli_env)
    assert unknown.returncode == 1 and "no audit records for run nope" in unknown.stderr
    garbage = tmp_path / "garbage.md"
    garbage.write_bytes(b"\x00\xffnot a report")
    refused = l9("report", "verify", str(garbage), env=cli_env)
    assert refused.returncode == 2 and str(garbage) in refused.stderr
    garbage.write_text("# a report?\n")
    refused = l9("report", "verify", str(garbage), env=cli_env)
    assert refused.returncode == 2 and "not an evidence report" in refused.stderr
    missing = l9("report", "verify", str(tmp_path / "missing.md"), env=cli_env)
    assert missing.returncode == 2 and "cannot read the report" in missing.stderr
    bad_format = l9("report", "x", "--format", "xml", env=cli_env)
    assert bad_format.returncode == 2 and "--format must be one of md, json" in bad_format.stderr
