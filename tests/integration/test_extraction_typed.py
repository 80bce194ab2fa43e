"""Typed messages on the real bus: generated agents of the sample emit a typed type with its
declared fields only, and refuse (dead letter) what its model does not declare."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.extraction import load_file, lock
from agents.extraction.generator import render_plan, write_folder
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, Verifier
from tests.conftest import ROOT, AgentProcess, wait_for
from tests.integration.test_generator import entries
from tests.unit.test_generator import local_kernels

pytestmark = pytest.mark.integration
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
#: An input of the open l9.tensoraios.score.v1: the fields l9.scores.computed.v1 declares, and more.
SCORE = {"request_id": "r-1", "x": 1.5, "y": 2.0, "w1": 0.5, "w2": -0.25, "tags": ["urgent"], "task": "t-1"}
COMPUTED = {"request_id": "r-2", "x": 1.0, "y": 1.0, "w1": 1.0, "w2": 1.0, "tags": [], "tensor_score": 0.5}


async def test_generated_agents_emit_declared_fields_only_and_refuse_what_a_typed_type_does_not_declare(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    tmp_path: Path,
) -> None:
    plan = lock(load_file(SAMPLE))
    folder = tmp_path / "folder"
    write_folder(folder, render_plan(plan, local_kernels(plan)))
    env = {"PYTHONPATH": os.pathsep.join([str(folder / "code"), str(ROOT)])}
    core = spawn("L9.core.tensoraios.agent:TensoraiosAgent", env=env)
    auditor = spawn("L9.governance.tensor_auditor.auditor_controller:TensorAuditorAgent", env=env)
    publisher = Publisher(redis, keys, signer)
    score = PacketEnvelope.new(type="l9.tensoraios.score.v1", source="agent://test/0", data=SCORE)
    computed = "l9.scores.computed.v1"
    bad = PacketEnvelope.new(type=computed, source="agent://test/0", data={**COMPUTED, "merchant": "m-1"})
    wrong = PacketEnvelope.new(type=computed, source="agent://test/0", data={**COMPUTED, "x": "one"})
    for envelope in (score, bad, wrong):
        await publisher.publish(envelope)

    async def dead() -> dict[str, str]:
        found: Any = await redis.xrange(keys.dead("scores"))
        return {f[b"id"].decode(): f[b"dl_detail"].decode() for _, f in found if b"id" in f}

    async def settled() -> bool:
        findings = await entries(redis, keys, verifier, "tensoraudit", score.id)
        return len(findings) == 1 and {bad.id, wrong.id} <= set(await dead())

    await wait_for(settled, timeout=60)
    scores = {e.type: e for e in await entries(redis, keys, verifier, "scores", score.id)}
    typed = scores[computed].data
    # typed: exactly the declared fields (the kernel's result among them), nothing else
    assert set(typed) == {"request_id", "x", "y", "w1", "w2", "tags", "tensor_score", "hops"}
    assert typed["tensor_score"] == pytest.approx(1 / (1 + 2.718281828459045 ** -(0.5 * 1.5 - 0.25 * 4)))
    # open: everything the input carried
    assert scores["l9.scores.embedded.v1"].data["task"] == "t-1"
    # the auditor read the typed score (and relayed it); the two that do not fit its model are dead
    (finding,) = await entries(redis, keys, verifier, "tensoraudit", score.id)
    assert finding.causation_id == scores[computed].id and finding.data["request_id"] == "r-1"
    details = await dead()
    assert "merchant" in details[bad.id] and "x" in details[wrong.id], details
    assert scores[computed].id not in details
    for envelope in (bad, wrong):
        assert await entries(redis, keys, verifier, "tensoraudit", envelope.id) == []
    assert core.terminate() == 0 and auditor.terminate() == 0
