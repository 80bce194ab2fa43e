"""Typed messages (``streams.fields``): checked at load with file:line, rendered as closed models.

A type given fields under ``streams.fields`` travels as a closed, strict payload model of
those fields (plus ``hops``); every other type keeps its open model. The generated tests of
a typed type refuse an unknown field and a wrong type, and pass as the validator runs them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

import envelope
from agents.contracts.extraction.collection import SchemaErrors
from agents.extraction import load_collection, load_file, lock
from agents.extraction.check import check_collection, generation_errors
from agents.extraction.generator import render_plan
from agents.extraction.loader import read_collection
from envelope import PayloadRegistry
from l9.asyncapi import build_document, generated_types
from tests.conftest import ROOT, run_l9
from tests.unit.test_generator import local_kernels, run_generated_tests, write

SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
#: A producer and a consumer of one typed type, and an open type beside it.
TYPED = """\
system: Fraud Scorer
module: fraud
name: scorer
role: Scores transactions
rootpath: typedcase/scorer
governance: {anchors: [Igor]}
cursorinstructions:
  generatefiles: [__init__.py, payloads.py, agent.py, test_scorer.py]
streams:
  consumes: [l9.fraud.txn.v1]
  produces: [l9.fraud.score.v1]
  fields:
    l9.fraud.score.v1:
      txn_id: str
      amount: float
      risk: float
      tags: list[ str ]
      note: "str|None"
      seen_at: datetime | None
      count: int | None
      flagged: bool
---
system: Fraud Reviewer
module: fraud
name: reviewer
role: Reviews scores
rootpath: typedcase/reviewer
governance: {anchors: [Igor]}
cursorinstructions:
  generatefiles: [agent.py, test_reviewer.py]
streams:
  consumes: [l9.fraud.score.v1]
  produces: [l9.fraud.review.v1]
  fields:
    l9.fraud.score.v1:
      txn_id: str
      amount: float
      risk: float
      tags: list[str]
      note: str | None
      seen_at: datetime | None
      count: int | None
      flagged: bool
"""
SCORE_FIELDS = {
    "amount": "float",
    "count": "int | None",
    "flagged": "bool",
    "note": "str | None",
    "risk": "float",
    "seen_at": "datetime | None",
    "tags": "list[str]",
    "txn_id": "str",
}


def line_of(text: str, fragment: str, start: int = 0) -> int:
    """1-based line of the first line holding ``fragment`` after line ``start``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if number > start and fragment in line:
            return number
    raise AssertionError(fragment)


def errors_of(text: str, origin: str = "typed.yaml") -> list[str]:
    with pytest.raises(SchemaErrors) as caught:
        check_collection(text, origin, strict=True)
    return [str(e) for e in caught.value.errors]


# -- the schema --------------------------------------------------------------------------------


def test_fields_load_in_their_canonical_spelling() -> None:
    collection = load_collection(TYPED, "typed.yaml")
    for agent in collection:
        assert agent.streams.fields == {"l9.fraud.score.v1": SCORE_FIELDS}
    assert collection.agent("scorer").streams.produces == ("l9.fraud.score.v1",)


def test_an_untyped_collection_keeps_its_plan_hash_form() -> None:
    plan = lock(load_file(ROOT / "examples" / "symbolic_computation_service.yaml"))
    dumped = plan.model_dump(mode="json")
    assert all("fields" not in agent["streams"] for agent in dumped["agents"])
    typed = lock(load_collection(TYPED, "typed.yaml")).model_dump(mode="json")
    assert typed["agents"][0]["streams"]["fields"] == {"l9.fraud.score.v1": SCORE_FIELDS}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("dict", "'dict' is not a field type"),
        ("list[list[str]]", "'list[list[str]]' is not a field type"),
        ("decimal | None", "'decimal | None' is not a field type"),
        ("3", "Input should be a valid string"),
    ],
)
def test_a_field_of_an_unknown_type_is_named_at_its_line(written: str, expected: str) -> None:
    text = TYPED.replace("      risk: float\n", f"      risk: {written}\n", 1)
    found = errors_of(text)
    line = line_of(text, "      risk:")
    assert len(found) == 1, found
    assert found[0].startswith(f"typed.yaml:{line} agent 'scorer': streams.fields.l9.fraud.score.v1.risk")
    assert expected in found[0]


def test_a_typed_type_must_be_streamed_and_declare_a_field() -> None:
    text = TYPED.replace(
        "  fields:\n    l9.fraud.score.v1:\n",
        "  fields:\n    l9.fraud.other.v1: {}\n    l9.fraud.score.v1:\n",
        1,
    )
    found = errors_of(text)
    line = line_of(text, "l9.fraud.other.v1: {}")
    assert found == [
        f"typed.yaml:{line} agent 'scorer': streams.fields.l9.fraud.other.v1 is neither consumed nor produced"
        " by the agent"
    ]
    text = TYPED.replace(
        "  produces: [l9.fraud.score.v1]\n", "  produces: [l9.fraud.score.v1, l9.fraud.empty.v1]\n", 1
    )
    text = text.replace("  fields:\n", "  fields:\n    l9.fraud.empty.v1: {}\n", 1)
    found = errors_of(text)
    assert len(found) == 1 and "streams.fields.l9.fraud.empty.v1 declares no field" in found[0], found


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("hops", "the relay counter"),
        ("class", "a Python keyword"),
        ("model_config", "a name pydantic models use"),
        ("json", "a name pydantic models use"),
    ],
)
def test_a_field_name_the_model_cannot_take_is_refused(name: str, why: str) -> None:
    text = TYPED.replace("      flagged: bool\n", f"      flagged: bool\n      {name}: int\n")
    found = errors_of(text)
    lines = [
        line_of(text, f"      {name}: int"),
        line_of(text, f"      {name}: int", line_of(text, "name: reviewer")),
    ]
    assert len(found) == 2, found
    for error, line in zip(found, lines, strict=True):
        assert error.startswith(f"typed.yaml:{line} agent '")
        assert f"streams.fields.l9.fraud.score.v1.{name} cannot name a field: '{name}' is {why}" in error


def test_two_agents_disagreeing_on_a_type_are_named_with_both_places() -> None:
    text = TYPED.replace("      flagged: bool\n", "      flagged: str\n", 1)
    text = text.replace("      note: str | None\n", "", 1)
    found = errors_of(text)
    # each at its type's mapping of fields (which starts at its first field)
    first = line_of(text, "      txn_id: str")
    second = line_of(text, "      txn_id: str", first)
    assert found == [
        f"typed.yaml:{second} agent 'reviewer': streams.fields.l9.fraud.score.v1 differs from the fields"
        f" agent 'scorer' declares for it at line {first} (amount: float, count: int | None, flagged: str,"
        " note: str | None, risk: float, seen_at: datetime | None, tags: list[str], txn_id: str; here"
        " amount: float, count: int | None, flagged: bool, risk: float, seen_at: datetime | None,"
        " tags: list[str], txn_id: str): two agents must agree on a type"
    ]
    # the planner refuses it too (it runs generation_errors on what the loader accepted)
    collection, loaded = read_collection(text, "typed.yaml")
    assert loaded == [] and [str(e) for e in generation_errors(collection)] == found


def test_every_error_of_the_collection_is_listed_at_once() -> None:
    text = TYPED.replace("      risk: float\n", "      risk: number\n", 1).replace(
        "      flagged: bool\n", "      hops: int\n", 2
    )
    found = errors_of(text)
    # the bad type (scorer: the loader refuses the agent) and 'hops' (reviewer, which it accepts)
    assert len(found) == 2, found
    assert "agent 'scorer': streams.fields.l9.fraud.score.v1.risk: 'number' is not a field type" in found[0]
    assert "agent 'reviewer': streams.fields.l9.fraud.score.v1.hops cannot name a field" in found[1]


# -- what the generator writes ------------------------------------------------------------------


def test_the_payload_model_is_closed_typed_and_sorted_and_rendering_is_deterministic() -> None:
    plan = lock(load_collection(TYPED, "typed.yaml"))
    files = render_plan(plan, local_kernels(plan))
    payloads = files["code/typedcase/scorer/payloads.py"].decode()
    assert 'model_config = ConfigDict(frozen=True, extra="forbid", strict=True)' in payloads
    assert "class FraudScoreV1(TypedPayload):" in payloads and "class FraudTxnV1(StreamPayload):" in payloads
    declared = [
        "amount: float",
        "count: int | None = None",
        "flagged: bool",
        "note: str | None = None",
        "risk: float",
        "seen_at: datetime | None = Field(default=None, strict=False)",
        "tags: list[str]",
        "txn_id: str",
    ]
    positions = [payloads.index(f"    {line}\n") for line in declared]
    assert positions == sorted(positions)
    assert "from datetime import datetime" in payloads
    # the same fields in another order and spelling: the same plan hash, the same bytes
    reordered = TYPED.replace(
        "      txn_id: str\n      amount: float\n", "      amount: float\n      txn_id:  str\n"
    )
    again = lock(load_collection(reordered, "typed.yaml"))
    assert again.hash == plan.hash
    assert render_plan(again, local_kernels(again)) == files


@pytest.fixture
def typed_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PayloadRegistry]:
    """The generated modules imported here, registering into a registry of their own."""
    plan = lock(load_collection(TYPED, "typed.yaml"))
    folder = write(tmp_path, render_plan(plan, local_kernels(plan)))
    monkeypatch.setattr(envelope, "registry", PayloadRegistry())
    before = set(sys.modules)
    try:
        yield generated_types(folder / "code")
    finally:
        sys.path.remove(str(folder / "code"))
        for name in set(sys.modules) - before:
            if name.startswith("typedcase"):
                del sys.modules[name]
        importlib.invalidate_caches()


def test_the_generated_model_validates_and_refuses_unknown_fields_and_wrong_types(
    typed_models: PayloadRegistry,
) -> None:
    model = typed_models.model_for("l9.fraud.score.v1")
    valid = {"txn_id": "t-1", "amount": 12.5, "risk": 0.25, "tags": ["new"], "flagged": False}
    loaded = model.model_validate({**valid, "seen_at": "2026-12-08T03:00:00Z"}).model_dump(mode="json")
    assert loaded == {**valid, "note": None, "count": None, "seen_at": "2026-12-08T03:00:00Z", "hops": 0}
    with pytest.raises(ValidationError, match="merchant"):
        model.model_validate({**valid, "merchant": "m"})
    for name, wrong in [
        ("amount", "12.5"),
        ("txn_id", 7),
        ("tags", "new"),
        ("flagged", "no"),
        ("count", 1.5),
    ]:
        with pytest.raises(ValidationError, match=name):
            model.model_validate({**valid, name: wrong})
    with pytest.raises(ValidationError, match="risk"):
        model.model_validate({k: v for k, v in valid.items() if k != "risk"})
    assert typed_models.model_for("l9.fraud.txn.v1").model_validate({"any": 1}).model_dump() == {
        "hops": 0,
        "any": 1,
    }


def test_the_ecosystem_asyncapi_shows_the_typed_fields(typed_models: PayloadRegistry) -> None:
    messages = build_document(typed_models)["components"]["messages"]
    score = messages["l9_fraud_score_v1"]["payload"]
    assert score["additionalProperties"] is False
    assert set(score["required"]) == {"amount", "flagged", "risk", "tags", "txn_id"}
    assert score["properties"]["tags"] == {"items": {"type": "string"}, "title": "Tags", "type": "array"}
    assert score["properties"]["seen_at"]["anyOf"][0] == {"format": "date-time", "type": "string"}
    assert messages["l9_fraud_txn_v1"]["payload"]["additionalProperties"] is True


def test_l9_asyncapi_writes_the_document_of_an_extraction_folder(tmp_path: Path) -> None:
    plan = lock(load_collection(TYPED, "typed.yaml"))
    folder = write(tmp_path / "ecosystem", render_plan(plan, local_kernels(plan)))
    env = {**os.environ, "L9_HOME": str(tmp_path / "home")}
    done = run_l9("asyncapi", "--extraction", str(folder), env=env)
    assert done.returncode == 0, done.stderr
    score = json.loads(done.stdout)["components"]["messages"]["l9_fraud_score_v1"]["payload"]
    assert score["additionalProperties"] is False and "txn_id" in score["properties"]
    refused = run_l9("asyncapi", "--extraction", str(tmp_path), env=env)
    assert refused.returncode == 2
    assert f"{tmp_path}: not an extraction folder (it has no code/ folder)" in refused.stderr


async def test_the_generated_tests_of_typed_types_pass_as_the_validator_runs_them(tmp_path: Path) -> None:
    plan = lock(load_collection(TYPED, "typed.yaml"))
    files = render_plan(plan, local_kernels(plan))
    tests = files["tests/scorer/test_scorer.py"].decode()
    assert "def test_each_typed_type_travels_as_a_closed_model_of_its_fields() -> None:" in tests
    assert "def test_a_typed_type_the_input_does_not_fit_is_not_emitted() -> None:" in tests
    run = await run_generated_tests(write(tmp_path, files))
    assert run.tests > 0 and run.passed == run.tests, run
    assert run.coverage_percent >= 85.0


#: A typed produced type whose fields clash with what the generated tests feed an open input:
#: ``x`` is a kernel symbol (a float) but an int here, ``note`` their free text but an int here.
CLASHING = """\
system: Doubler
module: edge
name: doubler
role: Doubles x
rootpath: typedclash/doubler
governance: {anchors: [Igor]}
cursorinstructions:
  generatefiles: [payloads.py, agent.py, kernels.py, test_doubler.py]
streams:
  consumes: [l9.clash.input.v1]
  produces: [l9.clash.output.v1, l9.clash.open.v1]
  fields:
    l9.clash.output.v1: {x: int, note: int, twice: float | None}
expressions:
  twice: "2*x"
"""


async def test_generated_tests_hold_when_typed_fields_clash_with_their_sample(tmp_path: Path) -> None:
    plan = lock(load_collection(CLASHING, "clash.yaml"))
    files = render_plan(plan, local_kernels(plan))
    tests = files["tests/doubler/test_doubler.py"].decode()
    assert "SAMPLE holds every field" not in tests, "the sample cannot fit the typed type here"
    run = await run_generated_tests(write(tmp_path, files))
    assert run.tests > 0 and run.passed == run.tests, run


def test_the_sample_declares_typed_messages() -> None:
    collection = load_file(SAMPLE)
    typed = {t for agent in collection for t in agent.streams.fields}
    assert typed == {"l9.models.updated.v1", "l9.scores.computed.v1"}
    trainer = collection.agent("tensor_trainer").streams.fields["l9.models.updated.v1"]
    assert trainer == collection.agent("tensor_auditor").streams.fields["l9.models.updated.v1"]
