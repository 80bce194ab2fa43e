"""Section table v2 on the extraction pipeline's real payloads: which records fail a run
(nested and boolean fields), the facts every section shows, and v1 reports left as they were."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.auditor.report import (
    TABLES,
    ChainPoint,
    Report,
    build_report,
    first_difference,
    parse_report,
    render,
    sign_report,
)
from agents.auditor.report.model import FactTable
from agents.auditor.report.sections import TABLE_V1, TABLE_V2, field_at
from envelope import PacketEnvelope, encode
from memory.chain import (
    GENESIS,
    HASH_VERSION,
    canonical_header,
    chain_hash,
    leaf_hash,
    payload_hash,
    to_micros,
)
from memory.postgres import StoredEntry
from tests.fake_pipeline import (
    ROOT,
    Step,
    downstream,
    envelopes_of,
    generated_files,
    locked_of,
    planner_steps,
    request_for,
)
from tests.unit.test_report import FULL_RUN, GENERATED, KEY, SIGNER, checkpoint_of, make_entries, section_text

RUN = "run-v2"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def entries_of(envelopes: Sequence[PacketEnvelope]) -> list[StoredEntry]:
    """Trail entries (a real hash chain) holding these envelopes, seq 1.. in order."""
    entries, previous = [], GENESIS
    for seq, envelope in enumerate(envelopes, start=1):
        fields = encode(envelope, SIGNER)
        env, sig = fields["env"], str(fields["sig"])
        assert isinstance(env, bytes)
        digest = payload_hash(env, sig, "k")
        header = canonical_header(
            [
                HASH_VERSION,
                seq,
                envelope.id,
                envelope.type,
                envelope.source,
                envelope.correlation_id,
                envelope.causation_id,
                to_micros(envelope.time),
                to_micros(T0),
                "t:x",
                f"{seq}-0",
            ]
        )
        leaf = leaf_hash(header, digest)
        previous = chain_hash(previous, leaf)
        entries.append(
            StoredEntry(
                seq=seq,
                envelope_id=envelope.id,
                type=envelope.type,
                source=envelope.source,
                correlation_id=envelope.correlation_id,
                causation_id=envelope.causation_id,
                envelope_time=envelope.time,
                recorded_at=T0,
                stream="t:x",
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


def report_of(entries: Sequence[StoredEntry], version: int = 2, run: str = RUN) -> Report:
    top = entries[-1]
    built = build_report(
        entries,
        run_id=run,
        generated_at=GENERATED,
        head=ChainPoint(top.seq, top.chain_hash),
        checkpoint=checkpoint_of(top),
        sections_version=version,
    )
    return sign_report(built, KEY)


def request_envelope() -> PacketEnvelope:
    data = request_for().model_dump(mode="json")
    return PacketEnvelope.new(
        type="l9.extract.request.v1",
        source="agent://cli/tester",
        data=data,
        correlation_id=RUN,
        kind="request",
    )


async def run_report(fail: str | None = None, path: Path | None = None) -> tuple[Report, list[Step]]:
    request = request_envelope()
    steps = await planner_steps(request_for(path) if path else request_for(), T0)
    if path is None:
        at, locked = locked_of(steps)
        steps += downstream(at, locked, f"/x/{locked.folder_name}", fail=fail)
    envelopes = [request, *(e for e, _ in envelopes_of(request, steps))]
    return report_of(entries_of(envelopes)), steps


def facts(report: Report, number: int) -> dict[str, FactTable]:
    return {t.title: t for t in report.sections[number - 1].facts}


def column(table: FactTable, name: str) -> list[str]:
    i = table.columns.index(name)
    return [row[i] for row in table.rows]


async def test_a_passed_run_is_completed_and_every_section_shows_its_facts() -> None:
    report, steps = await run_report()
    assert report.sections_version == 2 and report.outcome.status == "completed"
    assert report.outcome.failures == () and report.appendix == ()
    for section in report.sections:
        assert section.facts, f"section {section.number} shows no facts"
    _, locked = locked_of(steps)
    planned = facts(report, 2)["Planned items"]
    assert len(planned.rows) == len(locked.plan.items)
    files = facts(report, 5)["Files"]
    expected = generated_files(locked)
    assert column(files, "path") == [f.path for f in expected]
    assert column(files, "lines") == [str(f.lines) for f in expected]
    assert column(files, "sha256") == [f.sha256 for f in expected]
    assert column(facts(report, 5)["Agents generated"], "agent") == [a for w in locked.plan.waves for a in w]
    decisions = facts(report, 6)["Decisions"]
    assert set(column(decisions, "outcome")) == {"allow"} and len(decisions.rows) == len(expected)
    tests = facts(report, 7)["Tests and coverage"]
    assert (column(tests, "pass rate"), column(tests, "line coverage")) == (["100.0%"], ["91.5%"])
    assert column(facts(report, 8)["Drift, cycles and links"], "result") == ["ok"]
    assert column(facts(report, 10)["Run"], "result") == ["passed"]
    # no escalation: section 9 still says who decided, under which policies
    outcomes = facts(report, 9)["Decisions by outcome (section 6)"]
    assert outcomes.rows[0] == ("allow", str(len(expected)), "agent://enforcer/enforcer-0")
    assert column(facts(report, 9)["Policies applied"], "subjects judged") == [str(len(expected))] * 4
    waves = facts(report, 3)["Waves (agents built in parallel)"]
    assert column(waves, "agents")[0] == "tensoraios"
    assert all(r == "ok" for r in column(facts(report, 4)["Baseline checks"], "result"))


async def test_a_denied_artifact_fails_the_run_through_the_nested_decision_outcome() -> None:
    report, _ = await run_report("enforce")
    assert report.outcome.status == "failed"
    reasons = {(f.type, f.reason) for f in report.outcome.failures}
    assert ("l9.governance.decision.v1", "decision.outcome = 'deny'") in reasons
    assert ("l9.enforce.completed.v1", "allowed = False") in reasons
    assert ("l9.run.completed.v1", "result = 'failed'") in reasons
    decisions = facts(report, 6)["Decisions"]
    denied_row = [r for r in decisions.rows if r[2] == "deny"]
    assert len(denied_row) == 1 and denied_row[0][3] == "forbidden-calls@1"
    assert "os.system() runs a shell" in denied_row[0][4]
    assert column(facts(report, 6)["Enforcement"], "verdict") == ["DENIED"]
    md = render(report, "md")
    assert "decision.outcome = 'deny'" in section_text(md, 10)


async def test_escalations_show_who_approved_or_denied() -> None:
    denied, _ = await run_report("escalation")
    approved, _ = await run_report("approved")
    (row,) = facts(denied, 9)["Escalations and who decided"].rows
    assert row[5:8] == ("denied", "Igor", "too large to review") and row[2] == "size-bounds@1"
    assert denied.outcome.status == "failed"
    assert ("l9.governance.resolution.v1", "approved = False") in {
        (f.type, f.reason) for f in denied.outcome.failures
    }
    (row,) = facts(approved, 9)["Escalations and who decided"].rows
    assert row[5:7] == ("approved", "Igor")
    assert approved.outcome.status == "completed"


async def test_failing_tests_fail_the_run_and_section_7_says_which() -> None:
    report, _ = await run_report("validate")
    reasons = {(f.type, f.reason) for f in report.outcome.failures}
    assert reasons == {("l9.validation.tests.v1", "ok = False"), ("l9.run.completed.v1", "result = 'failed'")}
    tests = facts(report, 7)
    assert column(tests["Tests and coverage"], "pass rate") == ["97.5%"]
    assert column(tests["Tests and coverage"], "line coverage") == ["72.2%"]
    assert column(tests["Failures"], "what") == [
        "tests/tensoraios/test_agent.py::test_score: assert 0.5 == 0.73"
    ]


async def test_a_generation_failure_is_reported_in_section_5() -> None:
    report, _ = await run_report("generate")
    assert report.outcome.status == "failed"
    (row,) = facts(report, 5)["Generation failed"].rows
    assert "did not answer within 30 s" in row[2]
    assert [s.number for s in report.sections if not s.records] == [6, 7, 8, 9]


async def test_a_rejected_plan_lists_every_error_and_the_cycle() -> None:
    report, _ = await run_report(path=ROOT / "examples" / "broken" / "cycle.yaml")
    rejected = facts(report, 2)["Rejected (stage research)"]
    assert [r[1:3] for r in rejected.rows] == [("cycle.yaml:8", "ingest"), ("cycle.yaml:35", "watchdog")]
    cycles = column(facts(report, 3)["Dependency cycles"], "cycle")
    assert cycles == ["ingest -> score -> report -> ingest", "watchdog -> watchdog"]
    assert report.outcome.status == "failed"
    assert {f.type for f in report.outcome.failures} == {"l9.plan.rejected.v1", "l9.run.completed.v1"}
    assert "Planned items" not in facts(report, 2)


async def test_v2_reports_round_trip_and_a_changed_fact_names_its_section() -> None:
    report, _ = await run_report()
    md, js = render(report, "md"), render(report, "json")
    assert Report.model_validate_json(js) == report
    for text in (md, js):
        assert first_difference(parse_report(text), report) is None
    sha = facts(report, 5)["Files"].rows[0][5]
    assert f"`{sha}`" in section_text(md, 5)
    edited = parse_report(md.replace(f"`{sha}`", f"`{'0' * 64}`", 1))
    assert (first_difference(edited, report) or "").startswith("section 5 (Phase 2: implementation")
    data = json.loads(js)
    data["sections"][6]["facts"][0]["rows"][0][8] = "12.5%"
    changed = parse_report(json.dumps(data, sort_keys=True, indent=2))
    assert first_difference(changed, report) == (
        "section 7 (Phase 4: validation (tests, pass rate, coverage)) does not match the trail"
    )


def test_v1_reports_keep_their_shape() -> None:
    entries = make_entries(FULL_RUN)
    v1 = report_of(entries, version=1, run=entries[0].correlation_id)
    assert all(s.facts == () for s in v1.sections)
    data = json.loads(render(v1, "json"))
    assert all("facts" not in s for s in data["sections"])
    assert "Records:" not in render(v1, "md")
    assert first_difference(parse_report(render(v1, "json")), v1) is None
    assert sorted(TABLES) == [1, 2, 3] and TABLES[1] is TABLE_V1


def test_v1_misses_a_nested_deny_that_v2_catches() -> None:
    nested = {"decision": {"outcome": "deny", "subject": "a.py", "reason": "r"}}
    assert TABLE_V1.failures.data_failure("l9.governance.decision.v1", nested) is None
    assert TABLE_V2.failures.data_failure("l9.governance.decision.v1", nested) == (
        "l9.governance.decision.v*",
        "decision.outcome",
        "deny",
    )
    # v1 keeps comparing the top-level field it always compared
    assert TABLE_V1.failures.data_failure("l9.governance.decision.v1", {"decision": "deny"}) is not None


@pytest.mark.parametrize(
    ("data", "broken"),
    [
        ({"ok": False}, True),
        ({"ok": True}, False),
        ({"ok": 0}, False),  # a number is not the boolean the rule names
        ({}, False),
        ({"ok": None}, False),
    ],
)
def test_boolean_rules_match_only_false(data: dict[str, object], broken: bool) -> None:
    assert (TABLE_V2.failures.data_failure("l9.validation.tests.v1", data) is not None) == broken


def test_dotted_paths_stop_at_anything_that_is_not_a_mapping() -> None:
    data = {"a": {"b": {"c": 1}}, "s": "text"}
    assert field_at(data, "a.b.c") == 1
    assert field_at(data, "a.b") == {"c": 1}
    missing = field_at(data, "a.x")
    assert field_at(data, "s.length") is missing and field_at(data, "a.b.c.d") is missing
