"""``l9 publish TYPE JSON``: a valid payload published, signed, read back and verified; bad
JSON, an unknown type, a payload failing its model and a bad stream refused in one line
naming what is wrong (exit 2), nothing published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bus import Keys, open_client
from envelope import decode_envelope
from l9.settings import Settings
from tests.conftest import StreamEntry, run_l9, stream_entries

pytestmark = pytest.mark.integration


async def _entries(settings: Settings, stream: str) -> list[StreamEntry]:
    redis = await open_client(settings.redis_url or "")
    try:
        return stream_entries(await redis.xrange(Keys(settings.namespace).stream(stream)))
    finally:
        await redis.aclose()


async def test_a_valid_payload_is_published_signed(l9_env: dict[str, str], l9_settings: Settings) -> None:
    done = run_l9("publish", "l9.demo.task.v1", '{"n": 41}', env=l9_env)
    assert done.returncode == 0, done.stderr
    envelope_id = done.stdout.strip()
    ((_, fields),) = await _entries(l9_settings, "demo.tasks")
    envelope = decode_envelope(fields, l9_settings.verifier())  # raises unless the signature verifies
    assert envelope.id == envelope_id and envelope.type == "l9.demo.task.v1"
    assert envelope.data == {"n": 41} and envelope.key_id == "dev" and envelope.signature
    assert envelope.source.startswith("agent://l9-publish/") and envelope.correlation_id == envelope_id

    elsewhere = run_l9("publish", "l9.demo.task.v1", '{"n": 42}', "--stream", "kit.other", env=l9_env)
    assert elsewhere.returncode == 0, elsewhere.stderr
    ((_, fields),) = await _entries(l9_settings, "kit.other")
    assert decode_envelope(fields, l9_settings.verifier()).id == elsewhere.stdout.strip()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["l9.demo.task.v1", '{"n": 1,}'], "error: bad JSON at line 1, column 9: Expecting property name"),
        (["l9.demo.task.v1", "[1]"], "error: the payload must be a JSON object, not list"),
        (
            ["l9.demo.tsak.v1", '{"n": 1}'],
            "error: unknown type 'l9.demo.tsak.v1': no payload model is registered for it; "
            "known in l9.demo: l9.demo.result.v1, l9.demo.task.v1",
        ),
        (["demo.task", "{}"], "error: envelope type 'demo.task' does not match l9.<area>.<name>.v<major>"),
        (
            ["l9.demo.task.v1", '{"n": "many"}'],
            "error: l9.demo.task.v1: field 'n': Input should be a valid integer, unable to parse string "
            "as an integer (got 'many')",
        ),
        (
            ["l9.demo.result.v1", '{"n": 1, "cube": 1}'],
            "error: l9.demo.result.v1: field 'square': Field required; field 'cube': Extra inputs are not "
            "permitted (got 1)",
        ),
        (
            ["l9.demo.task.v1", '{"n": 1}', "--stream", "Tasks!"],
            "error: --stream: stream name 'Tasks!' must be",
        ),
    ],
)
async def test_bad_input_is_one_line_naming_it_and_nothing_is_published(
    l9_env: dict[str, str], l9_settings: Settings, args: list[str], error: str
) -> None:
    done = run_l9("publish", *args, env=l9_env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith(error) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    for stream in ("demo.tasks", "demo.results", "demo"):
        assert await _entries(l9_settings, stream) == []


async def test_a_type_of_ones_own_with_import(
    l9_env: dict[str, str], l9_settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "my_types.py").write_text(
        "from envelope import Payload, payload\n\n\n"
        '@payload("l9.mine.note.v1")\nclass Note(Payload):\n    text: str\n'
    )
    env = {**l9_env, "PYTHONPATH": str(tmp_path)}  # l9 itself: the checkout, the current folder
    unknown = run_l9("publish", "l9.mine.note.v1", '{"text": "hi"}', env=env)
    assert unknown.returncode == 2 and "--import the module that declares it" in unknown.stderr
    done = run_l9("publish", "l9.mine.note.v1", json.dumps({"text": "hi"}), "--import", "my_types", env=env)
    assert done.returncode == 0, done.stderr
    ((_, fields),) = await _entries(l9_settings, "mine")
    assert decode_envelope(fields, l9_settings.verifier()).data == {"text": "hi"}
    missing = run_l9("publish", "l9.mine.note.v1", "{}", "--import", "not_my_types", env=env)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: --import not_my_types: ModuleNotFoundError: No module named")
