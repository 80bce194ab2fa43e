"""The pure parts of ``l9 tail`` / ``l9 audit verify``: durations, filters, lines, reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer

from envelope import PacketEnvelope
from l9.cli.audit import entry_json, entry_line, report_json, report_lines
from l9.cli.common import duration_option, parse_duration
from l9.tail import short_id
from memory.postgres import AuditRecord, Damage, EntryFilter, Problem, StoredEntry, VerifyReport


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h5m3s", timedelta(days=1, hours=12, minutes=5, seconds=3)),
        ("90m", timedelta(minutes=90)),
        (" 0s ", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", " ", "10", "5x", "1m2h", "1h1h", "-3m", "1.5h", "h", "2 h", "1w"])
def test_bad_durations_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as caught:
        parse_duration(bad)
    assert repr(bad) in str(caught.value)
    with pytest.raises(typer.BadParameter, match=r"e\.g\. 30s, 10m, 2h, 1d, 1h30m"):
        duration_option(bad)


def test_source_filter_is_an_agent_name_or_an_exact_uri() -> None:
    assert EntryFilter().source_like() is None
    assert EntryFilter(source="planner").source_like() == "agent://planner/%"
    assert EntryFilter(source="agent://planner/planner-0").source_like() == "agent://planner/planner-0"
    # LIKE's own wildcards in a name or URI are literal characters.
    assert EntryFilter(source="plan_er").source_like() == "agent://plan\\_er/%"
    assert EntryFilter(source="agent://a%/b_1").source_like() == "agent://a\\%/b\\_1"
    assert EntryFilter(type_glob="l9.plan_x.*").type_like() == "l9.plan\\_x.%"
    assert EntryFilter(type_glob="l9.?.v1").type_like() == "l9._.v1"


def _entry(data: dict[str, Any], run: str, env: bool = True) -> StoredEntry:
    envelope = PacketEnvelope.new(
        type="l9.plan.locked.v1",
        source="agent://planner/planner-0",
        data=data,
        correlation_id=run,
        causation_id="cause-1",
    )
    envelope = envelope.model_copy(update={"time": datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=UTC)})
    rec = AuditRecord.from_envelope(envelope, stream="l9:audit", entry_id="17-0")
    return StoredEntry(
        seq=42,
        envelope_id=rec.envelope_id,
        type=rec.type,
        source=rec.source,
        correlation_id=rec.correlation_id,
        causation_id=rec.causation_id,
        envelope_time=rec.time,
        recorded_at=datetime(2026, 3, 4, 5, 6, 8, 5, tzinfo=UTC),
        stream=rec.stream,
        entry_id=rec.entry_id,
        payload_hash=b"\x01" * 32,
        leaf_hash=b"\x02" * 32,
        chain_hash=bytes(range(32)),
        hash_version=1,
        env=rec.env if env else None,
        sig=rec.sig,
        key_id=rec.key_id,
    )


def test_an_entry_as_one_human_line_and_as_json() -> None:
    run = "0192f3a4-aaaa-7bbb-8ccc-0123456789ab"
    entry = _entry({"plan": "[bold]p-1[/bold]", "steps": [1, 2, 3]}, run)
    line = entry_line(entry, seq_width=5)
    assert line.plain == (
        "   42  2026-03-04 05:06:07.891Z  l9.plan.locked.v1  agent://planner/planner-0  …456789ab  "
        "plan=[bold]p-1[/bold] steps=[3 items]"
    )
    assert entry_json(entry) == {
        "seq": 42,
        "envelope_id": entry.envelope_id,
        "type": "l9.plan.locked.v1",
        "source": "agent://planner/planner-0",
        "correlation_id": run,
        "causation_id": "cause-1",
        "envelope_time": "2026-03-04T05:06:07.891234+00:00",
        "recorded_at": "2026-03-04T05:06:08.000005+00:00",
        "stream": "l9:audit",
        "entry_id": "17-0",
        "chain_hash": bytes(range(32)).hex(),
        "summary": "plan=[bold]p-1[/bold] steps=[3 items]",
    }
    assert entry_json(_entry({}, "r", env=False))["summary"] == "(payload redacted)"


def test_short_ids_keep_the_random_end() -> None:
    assert short_id("run-a") == "run-a"
    assert short_id("0192f3a4-aaaa-7bbb-8ccc-0123456789ab") == "…456789ab"


def _report(*problems: Problem) -> VerifyReport:
    return VerifyReport(
        problems=problems,
        entries_checked=1233,
        last_seq=1233,
        chain_hash=b"\xab" * 32,
        head_seq=2000,
        redacted=0,
        anchors_matched=1,
        started_from=None,
        signatures_checked=True,
        seconds=0.5,
    )


def test_a_damaged_report_names_the_first_bad_seq_first() -> None:
    first = Problem(Damage.PAYLOAD_CHANGED, 1234, "the bytes differ")
    later = Problem(Damage.TAIL_TRUNCATED, 1990, "ends early")
    lines = report_lines(_report(first, later))
    assert lines[0] == "first bad seq: 1234 (payload changed)"
    assert lines[1] == (
        "trail damaged: 2 problem(s); entries checked: 1233, head seq: 2000, 2,466 entries/s, "
        "checkpoints/anchors matched: 1, signatures checked"
    )
    assert lines[2:] == [
        "  seq 1234: payload changed: the bytes differ",
        "  seq 1990: tail truncated: ends early",
    ]
    data = report_json(_report(first, later))
    assert (data["ok"], data["first_bad_seq"], data["damage"]) == (False, 1234, "payload changed")
    assert [p["seq"] for p in data["problems"]] == [1234, 1990]


def test_an_intact_report_gives_the_totals() -> None:
    lines = report_lines(_report())
    assert lines[0].startswith("trail intact: 1233 entries from genesis to seq 1233")
    assert lines[1].startswith("entries checked: 1233, head seq: 2000, 2,466 entries/s")
    assert report_json(_report())["ok"] is True
