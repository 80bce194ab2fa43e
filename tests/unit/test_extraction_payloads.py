"""The planner's envelopes: payload types, the report's section table, and plan_request end to end."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from pydantic import ValidationError

from agents.auditor.report.sections import TABLE_V1
from agents.contracts.extraction.baseline import Probe
from agents.extraction import (
    ExtractRequest,
    PlanBaseline,
    PlanLocked,
    PlanRejected,
    PlanResearch,
    RunCompleted,
    SchemaParsed,
    content_hash,
    load_file,
    lock,
)
from agents.extraction.planner_agent import plan_request
from envelope import Payload, registry
from memory.summary import summarize

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANCHORS = frozenset({"Igor", "Compliance"})


async def fine() -> None:
    return None


PROBES: dict[str, Probe] = {"redis": fine, "postgres": fine, "graph": fine}


def request_for(path: Path) -> ExtractRequest:
    return ExtractRequest.of_text(path.read_text(), path.name, "user:test")


async def planned(request: ExtractRequest, strict: bool = True, **probes: Probe) -> list[Payload]:
    """The planner's payloads up to the plan (a rejection's closing run record checked and dropped)."""
    out = await plan_request(request, probes={**PROBES, **probes}, anchors=ANCHORS, strict=strict)
    if isinstance(out[-1], RunCompleted):
        ended = out.pop()
        assert isinstance(out[-1], PlanRejected), "only a rejection ends the run at the planner"
        assert (ended.result, ended.phase, ended.collection) == ("failed", "plan", out[-1].collection)
        assert out[-1].errors[0].text in ended.reason
    return out


@pytest.mark.parametrize(
    ("model", "type_", "section"),
    [
        (ExtractRequest, "l9.extract.request.v1", 1),
        (SchemaParsed, "l9.schema.parsed.v1", 1),
        (PlanLocked, "l9.plan.locked.v1", 2),
        (PlanRejected, "l9.plan.rejected.v1", 2),
        (PlanResearch, "l9.plan.research.v1", 3),
        (PlanBaseline, "l9.plan.baseline.v1", 4),
    ],
)
def test_each_payload_type_fills_its_report_section(model: type[Payload], type_: str, section: int) -> None:
    assert registry.type_of(model) == type_
    assert TABLE_V1.section_of(type_) == section


def test_only_the_rejection_marks_a_run_as_failed() -> None:
    types = ("l9.schema.parsed.v1", "l9.plan.research.v1", "l9.plan.baseline.v1", "l9.plan.locked.v1")
    marked = [
        t
        for t in (*types, "l9.plan.rejected.v1")
        if any(fnmatchcase(t, g) for g in TABLE_V1.failures.type_globs)
    ]
    assert marked == ["l9.plan.rejected.v1"]


def test_a_request_carries_the_text_or_a_path_and_the_hash_of_it() -> None:
    request = ExtractRequest.of_text("name: a\n", "a.yaml", "user:test")
    assert request.content_hash == content_hash("name: a\n")
    with pytest.raises(ValidationError, match="content_hash is not the SHA-256 of text"):
        ExtractRequest(file="a.yaml", content_hash="0" * 64, requester="u", text="name: a\n")
    with pytest.raises(ValidationError, match="either as text or as a path"):
        ExtractRequest(file="a.yaml", content_hash="0" * 64, requester="u", text="x", path="a.yaml")
    with pytest.raises(ValidationError, match="either as text or as a path"):
        ExtractRequest(file="a.yaml", content_hash="0" * 64, requester="u")


async def test_a_valid_collection_is_parsed_researched_baselined_and_locked() -> None:
    payloads = await planned(request_for(EXAMPLES / "tensoraios_ecosystem.md"))
    assert [type(p) for p in payloads] == [SchemaParsed, PlanResearch, PlanBaseline, PlanLocked]
    parsed, found, baseline, locked = payloads
    assert isinstance(parsed, SchemaParsed) and parsed.outcome == "parsed: 5 agents"
    assert [a.name for a in parsed.agents][:2] == ["tensoraios", "main_agent"]
    assert isinstance(found, PlanResearch) and found.outcome == "5 agents in 3 waves"
    assert isinstance(baseline, PlanBaseline) and baseline.ok and baseline.outcome == "passed: 13 checks"
    assert isinstance(locked, PlanLocked) and locked.outcome == "locked: 61 items, 3 waves"
    assert locked.hash == lock(load_file(EXAMPLES / "tensoraios_ecosystem.md")).hash
    again = PlanLocked.model_validate(locked.model_dump(mode="json"))
    assert again == locked, "the payload survives the wire"
    assert summarize(locked.model_dump(mode="json")).startswith(
        "outcome=locked: 61 items, 3 waves collection="
    )


async def test_an_invalid_collection_is_rejected_at_schema_with_every_error() -> None:
    (rejected,) = await planned(request_for(EXAMPLES / "broken" / "unknown_dependency.md"))
    assert isinstance(rejected, PlanRejected)
    assert (rejected.stage, rejected.collection, rejected.outcome) == (
        "schema",
        "unknown_dependency",
        "rejected at schema: 2 errors",
    )
    first = rejected.errors[0]
    assert (first.file, first.line, first.agent, first.field, first.code) == (
        "unknown_dependency.md",
        24,
        "plastos_adapter",
        "depends_on.hard",
        "unknown_dependency",
    )
    assert first.text.startswith(
        "unknown_dependency.md:24 agent 'plastos_adapter': depends_on.hard names unknown"
    )


async def test_a_cycle_is_rejected_after_the_research_is_recorded() -> None:
    payloads = await planned(request_for(EXAMPLES / "broken" / "cycle.yaml"))
    assert [type(p) for p in payloads] == [SchemaParsed, PlanResearch, PlanRejected]
    rejected = payloads[-1]
    assert isinstance(rejected, PlanRejected) and rejected.stage == "research"
    assert [e.text for e in rejected.errors] == [
        "cycle.yaml:8 agent 'ingest': depends_on.hard forms a cycle: ingest -> score -> report -> ingest",
        "cycle.yaml:35 agent 'watchdog': depends_on.hard forms a cycle: watchdog -> watchdog",
    ]


async def test_unresolvable_files_reject_only_in_strict_mode() -> None:
    request = request_for(EXAMPLES / "broken" / "unresolvable_file.yaml")
    strict = await planned(request)
    assert isinstance(strict[-1], PlanRejected) and strict[-1].stage == "plan" and len(strict[-1].errors) == 7
    lenient = await planned(request, strict=False)
    assert isinstance(lenient[-1], PlanLocked) and len(lenient[-1].plan.unresolved) == 7


async def test_baseline_failures_and_unresolvable_files_are_listed_together() -> None:
    async def down() -> None:
        raise ConnectionError("refused")

    text = (EXAMPLES / "broken" / "unresolvable_file.yaml").read_text()
    uses_redis = "  memorytopology: {workingmemory: {storagetype: redis}}\n  streams:"
    text = text.replace("  streams:", uses_redis, 1)
    payloads = await planned(ExtractRequest.of_text(text, "unresolvable_file.yaml", "u"), redis=down)
    rejected = payloads[-1]
    assert isinstance(rejected, PlanRejected) and rejected.stage == "baseline"
    assert [e.code for e in rejected.errors].count("unresolvable") == 7
    assert [e.text for e in rejected.errors if e.code == "baseline"] == [
        "unresolvable_file.yaml:9 agent 'tensoraios': memorytopology.workingmemory.storagetype needs"
        " the redis backend, which failed its baseline check: ConnectionError: refused"
    ]
    assert payloads[-2] == PlanBaseline.model_validate(payloads[-2].model_dump()), "baseline recorded before"
    assert isinstance(payloads[-2], PlanBaseline) and not payloads[-2].ok


async def test_a_request_by_path_is_read_and_checked_against_its_hash(tmp_path: Path) -> None:
    source = tmp_path / "tensoraios_ecosystem.md"
    text = (EXAMPLES / "tensoraios_ecosystem.md").read_text()
    source.write_text(text)
    by_path = ExtractRequest(
        file=source.name, content_hash=content_hash(text), requester="u", path=str(source)
    )
    assert isinstance((await planned(by_path))[-1], PlanLocked)
    source.write_text(text + "\n# edited\n")
    (changed,) = await planned(by_path)
    assert isinstance(changed, PlanRejected) and changed.stage == "request"
    assert changed.errors[0].text.startswith(f"tensoraios_ecosystem.md: {source} has changed: SHA-256 ")
    source.unlink()
    (missing,) = await planned(by_path)
    assert isinstance(missing, PlanRejected)
    assert (
        missing.errors[0].text == f"tensoraios_ecosystem.md: cannot read {source}: No such file or directory"
    )
