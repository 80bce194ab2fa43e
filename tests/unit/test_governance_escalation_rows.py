"""The escalation settings of the policy file, and the pending rows ``l9 governance pending`` lists:
a coalesced row carries its origin, count and latest requests; a row stored before coalescing
existed still reads as one violation."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from governance import PolicyEngine, PolicyFileError, parse_policy_text
from governance._escalation import Pending

ROW = Pending(
    id="e1",
    policy="sympy-dangerous-functions@1",
    subject="request l9.sympy.expand.v1 r1 from agent://mallory/mallory-0",
    reason="escalated by sympy-dangerous-functions@1: ...",
    anchors=("Igor",),
    deadline=datetime(2030, 1, 1, tzinfo=UTC),
    correlation_id="run-1",
)


def test_the_shipped_policy_bounds_the_escalations_an_origin_opens() -> None:
    spec = PolicyEngine.load().escalation
    assert (spec.deadline_s, spec.source_limit, spec.source_window_s) == (3600, 10, 3600)


def test_a_source_limit_below_one_is_refused_at_its_line() -> None:
    with pytest.raises(PolicyFileError) as err:
        parse_policy_text("escalation:\n  deadline_s: 60\n  source_limit: 0\n", "p.yaml")
    assert str(err.value).startswith("p.yaml:3: escalation.source_limit: Input should be greater than")


def test_a_row_stored_before_coalescing_reads_as_one_violation() -> None:
    old = {k: v for k, v in json.loads(ROW.to_json()).items() if k not in ("origin", "count", "latest")}
    row = Pending.from_json(json.dumps(old))
    assert (row.origin, row.count, row.latest) == (None, 1, ())
    assert row.counted(None, None) == row, "no count kept beside it: as stored"


def test_a_coalesced_row_carries_its_count_and_latest_requests() -> None:
    coalesced = Pending.from_json(
        json.dumps({**json.loads(ROW.to_json()), "origin": "agent://mallory/mallory-0", "latest": ["r1"]})
    )
    counted = coalesced.counted(b"3", b'["r1", "r2", "r3"]')
    assert (counted.origin, counted.count, counted.latest) == (
        "agent://mallory/mallory-0",
        3,
        ("r1", "r2", "r3"),
    )
    assert Pending.from_json(counted.to_json()) == counted
