"""``l9 agent run validator`` as a real process on the real Redis: enforced folders in, verdicts out."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.contracts.extraction import phases
from agents.extraction import EnforcementCompleted, LockedPlan, RunCompleted, Verified
from agents.extraction.validator.agent import result_id
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode, new_id
from tests.conftest import AgentProcess, stream_entries, wait_for
from tests.unit.test_validator_verify import ALPHA_BRIDGE, write_folder

pytestmark = pytest.mark.integration


def enforced(folder: Path, plan: LockedPlan, *, allowed: bool = True) -> PacketEnvelope:
    payload = EnforcementCompleted(
        outcome="allowed" if allowed else "denied",
        collection=plan.collection,
        plan_hash=plan.hash,
        folder=str(folder),
        allowed=allowed,
        decisions=13,
    )
    return PacketEnvelope.new(
        type="l9.enforce.completed.v1",
        source="agent://enforcer/test",
        data=payload.model_dump(mode="json"),
        correlation_id=new_id(),
    )


async def emitted(
    redis: RedisClient, keys: Keys, verifier: Verifier, run: str
) -> list[tuple[PacketEnvelope, Payload]]:
    """Every envelope of ``run`` on the validation and run streams, in the order published."""
    found = []
    for stream in ("validation", "run"):
        for _, fields in stream_entries(await redis.xrange(keys.stream(stream))):
            envelope, payload = decode(fields, verifier)
            if envelope.correlation_id == run:
                found.append((envelope, payload))
    return sorted(found, key=lambda pair: pair[0].sequence or 0)


async def test_the_validator_passes_a_good_folder_and_fails_a_damaged_one(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    tmp_path: Path,
) -> None:
    # no window of handled ids: the second `good` below is handled again, as a redelivery is
    validator = spawn("validator", env={"L9_DEDUPE_WINDOW_S": "0"})
    good_folder, plan = write_folder(tmp_path / "good")
    bad_folder, _ = write_folder(
        tmp_path / "bad",
        {
            "code/L9/demo/alpha/governance_bridge.py": ALPHA_BRIDGE.replace(
                '("Igor", "Compliance")', '("Igor",)'
            )
        },
    )
    shutil.copy(bad_folder / "docs/alpha/README.md", bad_folder / "docs/alpha/NOTES.md")
    good, bad, denied = (
        enforced(good_folder, plan),
        enforced(bad_folder, plan),
        enforced(good_folder, plan, allowed=False),
    )
    # `good` twice: a redelivery, which must repeat the same envelope ids.
    await Publisher(redis, keys, signer).publish_many([good, bad, denied, good])

    async def ended() -> bool:
        runs = [await emitted(redis, keys, verifier, e.correlation_id) for e in (good, bad)]
        return [sum(isinstance(p, RunCompleted) for _, p in pairs) for pairs in runs] == [2, 1]

    await wait_for(ended, timeout=90)
    twice = await emitted(redis, keys, verifier, good.correlation_id)
    assert len(twice) == 6 and len({e.id for e, _ in twice}) == 3
    assert {e.id for e, _ in twice} == {result_id(e.type, good.id) for e, _ in twice}
    for cause in (good, bad):
        run = list(
            {e.id: (e, p) for e, p in await emitted(redis, keys, verifier, cause.correlation_id)}.values()
        )
        assert [type(p) for _, p in run] == [phases.TestsValidated, Verified, RunCompleted]
        assert all(e.causation_id == cause.id and e.source.startswith("agent://validator/") for e, _ in run)

    tests, verified, passed = (p for _, p in twice[:3])
    assert isinstance(tests, phases.TestsValidated) and tests.ok, tests
    assert (tests.tests, tests.passed, tests.coverage_percent, tests.compiled) == (3, 3, 100.0, 8)
    assert isinstance(verified, Verified) and verified.ok, verified
    assert (
        isinstance(passed, RunCompleted) and passed.result == "passed" and passed.folder == str(good_folder)
    )

    tests, verified, failed = (p for _, p in await emitted(redis, keys, verifier, bad.correlation_id))
    assert isinstance(tests, phases.TestsValidated) and not tests.ok
    assert (tests.tests, tests.passed, tests.failed) == (3, 2, 1)
    assert isinstance(verified, Verified) and not verified.ok and verified.extra == ("docs/alpha/NOTES.md",)
    assert isinstance(failed, RunCompleted) and failed.result == "failed" and failed.phase == "validate"
    assert failed.outcome == "failed at validate: tests, extra, governance"
    assert failed.reason == (
        "tests: 1 of 3 did not pass (1 failed, 0 in error, 0 skipped: "
        "tests.alpha.test_alpha::test_anchors: AssertionError: assert ('Igor',) == ('Igor', 'Compliance')); "
        "extra: docs/alpha/NOTES.md; governance: alpha: code/L9/demo/alpha/governance_bridge.py: "
        "ANCHORS is ('Igor',), the schema says ('Igor', 'Compliance')"
    )

    assert await emitted(redis, keys, verifier, denied.correlation_id) == []
    assert validator.terminate() == 0
    events = [e.get("event") for e in validator.log_events()]
    assert events.count("validator.done") == 3 and events.count("validator.skipped") == 1
    assert "validator.tested" in events
