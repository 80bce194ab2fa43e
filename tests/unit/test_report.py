"""The evidence report engine without servers: the section table, the outcome, the
digest and signature, both renderings, parsing them back and naming what differs."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents.auditor.report import (
    EMPTY_SECTION,
    TABLES,
    ChainPoint,
    NoRecordsError,
    Report,
    ReportError,
    ReportFormatError,
    build_report,
    entries_digest,
    first_difference,
    parse_report,
    render,
    report_digest,
    sign_report,
    signature_problem,
    table,
)
from agents.auditor.report.build import MAX_FIELD
from envelope import PacketEnvelope, Signer, encode
from memory.chain import (
    GENESIS,
    HASH_VERSION,
    canonical_header,
    chain_hash,
    leaf_hash,
    payload_hash,
    to_micros,
)
from memory.postgres import Checkpoint, SigningKey, StoredEntry

RUN = "run-1"
SIGNER = Signer({"k": b"unit secret"}, "k")
KEY = SigningKey.generate()
T0 = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
GENERATED = datetime(2025, 1, 2, 4, 0, tzinfo=UTC)

#: One record for each section (10 for the final one), and one no section covers.
FULL_RUN: list[tuple[str, dict[str, Any], str]] = [
    ("l9.extract.request.v1", {"schema": "agents.yaml", "documents": 3}, "request"),
    ("l9.schema.parsed.v1", {"agents": ["a", "b"]}, "event"),
    ("l9.plan.research.v1", {"waves": [["a"], ["b"]], "order": ["a", "b"]}, "event"),
    ("l9.plan.baseline.v1", {"anchors_reachable": True}, "event"),
    ("l9.plan.locked.v1", {"files": 4, "plan_hash": "ab" * 16}, "event"),
    ("l9.artifact.generated.v1", {"path": "a/config.py", "lines": 40, "sha256": "cd" * 32}, "event"),
    ("l9.governance.decision.v1", {"decision": "allow", "policy": "no-todo"}, "event"),
    ("l9.governance.escalation.v1", {"anchor": "ops", "reason": "size"}, "event"),
    ("l9.governance.approval.v1", {"anchor": "ops", "by": "alice"}, "event"),
    ("l9.validation.tests.v1", {"passed": 12, "failed": 0, "coverage": 0.93}, "event"),
    ("l9.validation.verify.v1", {"cycles": 0}, "event"),
    ("l9.validation.drift.v1", {"drifted": []}, "event"),
    ("l9.sympy.result.v1", {"value": "2*x"}, "response"),
    ("l9.run.completed.v1", {"files": 4}, "event"),
]


def make_entries(
    specs: Sequence[tuple[str, dict[str, Any], str]], *, run: str = RUN, start: int = 1
) -> list[StoredEntry]:
    """Entries of a real hash chain from (type, data, kind) specs."""
    entries, previous = [], GENESIS
    for i, (type_, data, kind) in enumerate(specs):
        seq = start + i
        envelope = PacketEnvelope.new(
            type=type_, source="agent://planner/0", data=data, correlation_id=run, kind=kind
        ).model_copy(update={"time": T0 + timedelta(seconds=i)})
        fields = encode(envelope, SIGNER)
        env, sig = fields["env"], str(fields["sig"])
        assert isinstance(env, bytes)
        digest = payload_hash(env, sig, "k")
        header = canonical_header([
            HASH_VERSION, seq, envelope.id, type_, envelope.source, run, None,
            to_micros(envelope.time), to_micros(T0), "t:audit", f"{seq}-0",
        ])  # fmt: skip
        leaf = leaf_hash(header, digest)
        previous = chain_hash(previous, leaf)
        entries.append(
            StoredEntry(
                seq=seq,
                envelope_id=envelope.id,
                type=type_,
                source=envelope.source,
                correlation_id=run,
                causation_id=None,
                envelope_time=envelope.time,
                recorded_at=T0,
                stream="t:audit",
                entry_id=f"{seq}-0",
                payload_hash=digest,
                leaf_hash=leaf,
                chain_hash=previous,
                hash_version=HASH_VERSION,
                env=env,
                sig=sig,
                key_id="k",
            )
        )
    return entries


def checkpoint_of(entry: StoredEntry, id: int = 1) -> Checkpoint:
    return Checkpoint.sign(
        KEY, id=id, seq=entry.seq, chain_hash=entry.chain_hash, created_at=T0, previous=None
    )


def report_of(entries: Sequence[StoredEntry], *, head: StoredEntry | None = None) -> Report:
    top = head or entries[-1]
    return sign_report(
        build_report(
            entries,
            run_id=RUN,
            generated_at=GENERATED,
            head=ChainPoint(top.seq, top.chain_hash),
            checkpoint=checkpoint_of(top),
            sections_version=1,  # the engine on table v1; tests/unit/test_sections_v2.py covers v2
        ),
        KEY,
    )


def section_text(md: str, number: int) -> str:
    """The Markdown of section ``number``: from its heading to the next ``## `` heading."""
    match = re.search(rf"^## {number}\. .*?(?=^## |\Z)", md, re.MULTILINE | re.DOTALL)
    assert match, f"no section {number}"
    return match.group(0)


# -- the section table -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "number"),
    [
        ("l9.extract.request.v1", 1),
        ("l9.schema.parsed.v2", 1),
        ("l9.plan.locked.v1", 2),
        ("l9.plan.rejected.v3", 2),
        ("l9.plan.research.v1", 3),
        ("l9.plan.baseline.v1", 4),
        ("l9.artifact.generated.v1", 5),
        ("l9.generate.kernel.v1", 5),
        ("l9.governance.decision.v1", 6),
        ("l9.validation.tests.v1", 7),
        ("l9.validation.verify.v1", 8),
        ("l9.validation.drift.v1", 8),
        ("l9.governance.escalation.v1", 9),
        ("l9.governance.approval.v1", 9),
        ("l9.governance.denial.v1", 9),
        ("l9.run.completed.v1", 10),
        ("l9.sympy.result.v1", None),
        ("l9.plan.lockedx.v1", None),
    ],
)
def test_section_table_routes_each_type(type_: str, number: int | None) -> None:
    assert table(1).section_of(type_) == number


def test_section_tables_are_versioned() -> None:
    assert sorted(TABLES) == [1, 2, 3]
    assert [s.number for s in table(1).sections] == list(range(1, 11))
    with pytest.raises(KeyError, match="unknown section table version 9"):
        table(9)
    (entry,) = make_entries(FULL_RUN[:1])
    with pytest.raises(ReportError, match="unknown section table version 9"):
        build_report(
            [entry],
            run_id=RUN,
            generated_at=GENERATED,
            head=ChainPoint(1, entry.chain_hash),
            checkpoint=checkpoint_of(entry),
            sections_version=9,
        )


# -- building ---------------------------------------------------------------------------------------


def test_every_record_lands_in_its_section_or_the_appendix() -> None:
    entries = make_entries(FULL_RUN)
    report = report_of(entries)
    placed = {s.number: [r.type for r in s.records] for s in report.sections}
    assert placed[1] == ["l9.extract.request.v1", "l9.schema.parsed.v1"]
    assert placed[2] == ["l9.plan.locked.v1"]
    assert placed[5] == ["l9.artifact.generated.v1"]
    assert placed[8] == ["l9.validation.verify.v1", "l9.validation.drift.v1"]
    assert placed[9] == ["l9.governance.escalation.v1", "l9.governance.approval.v1"]
    assert placed[10] == ["l9.run.completed.v1"]
    assert [r.type for r in report.appendix] == ["l9.sympy.result.v1"]
    shown = sorted(r.seq for s in report.sections for r in s.records) + [r.seq for r in report.appendix]
    assert sorted(shown) == [e.seq for e in entries]  # nothing dropped, nothing twice
    (artifact,) = report.sections[4].records
    assert artifact.fields == {"lines": "40", "path": '"a/config.py"', "sha256": json.dumps("cd" * 32)}
    assert artifact.time == "2025-01-02T03:04:10.678901+00:00" and artifact.kind == "event"


def test_entries_of_other_runs_and_after_the_head_are_left_out() -> None:
    ours = make_entries(FULL_RUN[:3])
    other = make_entries(FULL_RUN[3:5], run="run-2", start=4)
    later = make_entries(FULL_RUN[5:6], start=6)
    report = report_of([*ours, *other, *later], head=other[-1])
    d = report.declaration
    assert (d.entries, d.first_seq, d.last_seq, d.head_seq) == (3, 1, 3, 5)
    assert d.entries_digest == entries_digest(ours).hex()
    assert all(r.seq <= 3 for s in report.sections for r in s.records)


def test_entries_digest_is_sha256_over_seq_and_chain_hash() -> None:
    entries = make_entries(FULL_RUN[:3])
    manual = hashlib.sha256(b"".join(e.seq.to_bytes(8, "big") + e.chain_hash for e in entries)).digest()
    assert entries_digest(entries) == manual
    assert entries_digest(entries[:2]) != manual


def test_build_refuses_no_records_and_an_uncovered_head() -> None:
    entries = make_entries(FULL_RUN[:3])
    with pytest.raises(NoRecordsError, match="no audit records for run nope"):
        build_report(
            entries,
            run_id="nope",
            generated_at=GENERATED,
            head=ChainPoint(3, entries[-1].chain_hash),
            checkpoint=checkpoint_of(entries[-1]),
        )
    with pytest.raises(ReportError, match=r"checkpoint #1 \(seq 2\) does not cover the head seq 3"):
        build_report(
            entries,
            run_id=RUN,
            generated_at=GENERATED,
            head=ChainPoint(3, entries[-1].chain_hash),
            checkpoint=checkpoint_of(entries[1]),
        )


def test_long_values_are_cut_and_redacted_payloads_shown_as_redacted() -> None:
    entries = make_entries([("l9.artifact.generated.v1", {"content": "x" * 1000}, "event")])
    entries += make_entries(FULL_RUN[6:7], start=2)
    entries[1] = replace(entries[1], env=None, sig=None)
    report = report_of(entries)
    (long,) = report.sections[4].records
    assert len(long.fields["content"]) == MAX_FIELD and long.fields["content"].endswith("…")
    (redacted,) = report.sections[5].records
    assert redacted.redacted and redacted.kind is None and redacted.fields == {}
    assert redacted.summary == "(payload redacted)"
    assert report.declaration.redacted_seqs == (2,)
    assert report.outcome.unexamined_seqs == (2,)
    assert "could not be examined (payload redacted or undecodable): seq 2" in report.outcome.statement
    md = render(report, "md")
    assert f"payload redacted (payload hash `{entries[1].payload_hash.hex()}`)" in section_text(md, 6)


# -- the outcome ------------------------------------------------------------------------------------


def test_completed_only_with_a_completion_record_and_no_failure() -> None:
    report = report_of(make_entries(FULL_RUN))
    assert report.outcome.status == "completed"
    assert report.outcome.completion_seqs == (14,)
    assert report.outcome.statement.startswith("completed: completion record at seq 14")
    assert report.outcome.failures == ()


def test_without_completion_record_the_run_is_incomplete() -> None:
    report = report_of(make_entries(FULL_RUN[:-1]))
    assert report.outcome.status == "incomplete"
    assert (
        report.outcome.statement
        == "incomplete: no completion record in the trail (its last record is seq 13)"
    )


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (("l9.plan.rejected.v1", {"errors": ["cycle a -> b -> a"]}, "event"), "its type marks a failure"),
        (("l9.validation.failed.v1", {"stage": "compile"}, "event"), "its type marks a failure"),
        (("l9.generate.kernel.v1", {"error": "timeout"}, "error"), "an envelope of kind 'error'"),
        (("l9.governance.decision.v1", {"decision": "deny", "policy": "eval"}, "event"), "decision = 'deny'"),
    ],
)
def test_a_failed_run_says_what_failed_citing_the_seq(
    spec: tuple[str, dict[str, Any], str], reason: str
) -> None:
    entries = make_entries([*FULL_RUN[:4], spec, *FULL_RUN[4:]])
    report = report_of(entries)
    outcome = report.outcome
    assert outcome.status == "failed"
    (failure,) = outcome.failures
    assert failure.seq == 5 and failure.type == spec[0] and reason in failure.reason
    assert outcome.statement.startswith(f"failed: 1 record(s) show a failure: seq 5 {spec[0]}: ")
    assert "The trail also holds a completion record (seq 15)" in outcome.statement
    final = section_text(render(report, "md"), 10)
    assert f"- seq 5 `{spec[0]}` from `agent://planner/0`: " in final
    assert "**Outcome: failed**" in render(report, "md")


def test_an_allowing_decision_is_no_failure() -> None:
    entries = make_entries(FULL_RUN)
    decision = next(s for s in report_of(entries).sections if s.number == 6)
    assert decision.records[0].fields["decision"] == '"allow"'
    assert report_of(entries).outcome.status == "completed"


# -- digest and signature ---------------------------------------------------------------------------


def test_digest_is_deterministic_and_covers_the_content() -> None:
    entries = make_entries(FULL_RUN)
    first, second = report_of(entries), report_of(entries)
    assert first == second and first.declaration.digest == report_digest(first).hex()
    changed = make_entries([*FULL_RUN[:-1], ("l9.run.completed.v1", {"files": 5}, "event")])
    assert report_of(changed).declaration.digest != first.declaration.digest
    unsigned = first.with_signature(first.declaration.key_id, "", "")
    assert report_digest(unsigned) == report_digest(first)  # digest and signature are not covered
    rekeyed = first.with_signature("someone-else", first.declaration.digest, first.declaration.signature)
    assert report_digest(rekeyed) != report_digest(first)  # the key id is


def test_signature_verifies_only_with_the_trusted_key() -> None:
    report = report_of(make_entries(FULL_RUN[:3]))
    stamp = report.stamp()
    assert signature_problem(stamp, KEY.trusted()) is None
    assert "is not a trusted report key" in str(signature_problem(stamp, SigningKey.generate().trusted()))
    other = SigningKey.generate()
    impostor = {stamp.key_id: other.public_bytes}
    assert "does not verify with key" in str(signature_problem(stamp, impostor))
    forged = stamp.model_copy(update={"signature": "00" * 64})
    assert "does not verify" in str(signature_problem(forged, KEY.trusted()))
    edited = stamp.model_copy(update={"digest": "11" * 32})
    assert "does not verify" in str(signature_problem(edited, KEY.trusted()))
    assert "not hex" in str(signature_problem(stamp.model_copy(update={"digest": "zz"}), KEY.trusted()))


# -- rendering and parsing back ---------------------------------------------------------------------


def test_markdown_has_every_section_in_order_and_ends_with_the_stamp() -> None:
    entries = make_entries([FULL_RUN[0], FULL_RUN[4], FULL_RUN[12]])
    report = report_of(entries)
    md = render(report, "md")
    headings = re.findall(r"^## (.*)$", md, re.MULTILINE)
    assert [h.split(".")[0] for h in headings] == [
        *map(str, range(1, 10)),
        "Appendix: records not covered by a section",
        "10",
    ]
    for number in (3, 4, 5, 6, 7, 8, 9, 10):
        assert EMPTY_SECTION in section_text(md, number)
    for number in (1, 2):
        assert EMPTY_SECTION not in section_text(md, number)
    assert (
        "| 2 | 2025-01-02T03:04:06.678901+00:00 | `agent://planner/0` | `l9.plan.locked.v1` | event |" in md
    )
    assert '  - `plan_hash`: `"' + "ab" * 16 + '"`' in md
    assert "`l9.sympy.result.v1`" in md.split("## Appendix")[1].split("## 10.")[0]
    assert md.rstrip("\n").endswith("```") and md.endswith("\n")
    parsed = parse_report(md)
    assert parsed.fmt == "md" and parsed.stamp == report.stamp()
    d = report.declaration
    for value in (d.digest, d.signature, d.head_chain_hash, d.checkpoint_digest, d.entries_digest, d.key_id):
        assert f"`{value}`" in section_text(md, 10)


def test_json_is_the_sorted_model_dump_and_parses_back() -> None:
    report = report_of(make_entries(FULL_RUN))
    text = render(report, "json")
    assert (
        text
        == json.dumps(report.model_dump(mode="json"), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    )
    assert Report.model_validate_json(text) == report
    parsed = parse_report(text)
    assert parsed.fmt == "json" and parsed.stamp == report.stamp() and parsed.data == json.loads(text)


def test_markdown_escapes_payload_text_so_it_cannot_forge_structure() -> None:
    hostile = "<script>a|b\n## 5. fake heading\n```json l9-report\n`x`"
    entries = make_entries([("l9.artifact.generated.v1", {"path": hostile, "n|ame": hostile}, "event")])
    md = render(report_of(entries), "md")
    assert len(re.findall(r"^## ", md, re.MULTILINE)) == 11
    assert len(re.findall(r"^```", md, re.MULTILINE)) == 2  # the stamp block's fences only
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "&lt;script&gt;" in row and "<script>" not in row
    assert len(re.findall(r"(?<!\\)\|", row)) == 7  # six cells: no pipe of the payload splits one
    assert parse_report(md).stamp == report_of(entries).stamp()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no 'json l9-report' stamp block"),
        ("just some words", "neither a JSON report nor a Markdown report"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "neither a JSON report"),
        ('{"declaration": 3}', "JSON without a report declaration"),
        ('{"declaration": {}}', "bad report stamp: format"),
        ("# x\n```json l9-report\n{oops}\n```\n", "the stamp block is not JSON"),
    ],
)
def test_unreadable_reports_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ReportFormatError, match=re.escape(message)):
        parse_report(text)


def test_a_stamp_with_a_bad_time_is_refused() -> None:
    md = render(report_of(make_entries(FULL_RUN[:2])), "md")
    broken = re.sub(r'"generated_at":"[^"]+"', '"generated_at":"yesterday"', md)
    with pytest.raises(ReportFormatError, match="generated_at 'yesterday' is not a time"):
        parse_report(broken)


# -- naming what differs ----------------------------------------------------------------------------


def _edit_line(text: str, needle: str, new: str) -> str:
    lines = text.split("\n")
    index = next(i for i, line in enumerate(lines) if needle in line)
    lines[index] = lines[index].replace(needle, new)
    return "\n".join(lines)


def test_first_difference_names_the_section_of_an_edited_markdown_line() -> None:
    report = report_of(make_entries(FULL_RUN))
    md = render(report, "md")
    assert first_difference(parse_report(md), report) is None
    edited = _edit_line(md, '`"a/config.py"`', '`"b/config.py"`')
    diff = first_difference(parse_report(edited), report)
    assert diff is not None and diff.startswith("section 5 (Phase 2: implementation")
    assert "does not match the trail (first difference at line" in diff
    declaration = first_difference(
        parse_report(_edit_line(md, "| 14 (seq 1 to 14) |", "| 13 (seq 2 to 14) |")), report
    )
    assert str(declaration).startswith("section 10 (Final declaration) does not match the trail")
    head = first_difference(parse_report(md.replace("from the audit trail only", "from memory")), report)
    assert head == "the file was edited outside the sections (line 3)"
    tail = first_difference(parse_report(md + "signed: trust me\n"), report)
    assert tail is not None and tail.startswith("the file was edited outside the sections")
    appendix = first_difference(parse_report(md.replace('`"2*x"`', '`"3*x"`')), report)
    assert appendix is not None and appendix.startswith("the appendix (records not covered by a section)")
    outcome = md.replace("completed: completion record at seq 14", "completed: completion record at seq 13")
    assert str(first_difference(parse_report(outcome), report)).startswith("section 10 (Final declaration)")


def test_first_difference_names_the_section_of_an_edited_json_report() -> None:
    report = report_of(make_entries(FULL_RUN))
    text = render(report, "json")
    assert first_difference(parse_report(text), report) is None
    data = json.loads(text)
    data["sections"][6]["records"][0]["fields"]["passed"] = "13"
    diff = first_difference(parse_report(json.dumps(data)), report)
    assert diff == "section 7 (Phase 4: validation (tests, pass rate, coverage)) does not match the trail"
    data = json.loads(text)
    data["outcome"]["status"] = "failed"
    diff = first_difference(parse_report(json.dumps(data)), report)
    assert diff == "section 10 (Final declaration): the outcome does not match the trail"
    assert first_difference(parse_report(json.dumps(json.loads(text))), report) == (
        "the file was edited outside the sections"
    )
