"""``l9 agent run generator`` as a real process with the SymPy worker, and generated agents on the bus."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.extraction import GenerationCompleted, LockedPlan, PlanLocked, load_file, lock
from agents.extraction.generator import render_plan, write_folder
from agents.extraction.planner_agent import stamp_of
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, Verifier, decode_envelope, utcnow
from tests.conftest import ROOT, AgentProcess, wait_for
from tests.unit.test_generator import local_kernels

pytestmark = pytest.mark.integration
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
MANIFEST = "extraction_manifest.json"


def locked(plan: LockedPlan, out_dir: Path) -> PacketEnvelope:
    payload = PlanLocked.of(plan, stamp=stamp_of(utcnow()), out_dir=str(out_dir))
    return PacketEnvelope.new(
        type="l9.plan.locked.v1", source="agent://planner/test-0", data=payload.model_dump(mode="json")
    )


async def entries(
    redis: RedisClient, keys: Keys, verifier: Verifier, stream: str, run: str
) -> list[PacketEnvelope]:
    """The envelopes of ``run`` on ``stream``, in stream order (signatures verified)."""
    found: Any = await redis.xrange(keys.stream(stream))
    envelopes = [decode_envelope(fields, verifier) for _, fields in found]
    return [e for e in envelopes if e.correlation_id == run]


def tree_hashes(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


async def generate(
    publisher: Publisher, redis: RedisClient, keys: Keys, verifier: Verifier, cause: PacketEnvelope
) -> list[PacketEnvelope]:
    await publisher.publish(cause)

    async def finished() -> list[PacketEnvelope]:
        sent = await entries(redis, keys, verifier, "generate", cause.id)
        return sent if any(e.type == "l9.generate.completed.v1" for e in sent) else []

    await wait_for(finished, timeout=120)
    return await finished()


async def test_the_generator_writes_every_file_and_a_second_run_is_byte_identical(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    tmp_path: Path,
) -> None:
    spawn("sympy")
    generator = spawn("generator")
    publisher = Publisher(redis, keys, signer)
    plan = lock(load_file(SAMPLE))
    first = locked(plan, tmp_path / "one")
    sent = await generate(publisher, redis, keys, verifier, first)
    assert [e.type for e in sent] == ["l9.generate.agent.v1"] * 5 + ["l9.generate.completed.v1"]
    assert all(e.causation_id == first.id and e.source.startswith("agent://generator/") for e in sent)
    completed = GenerationCompleted.model_validate(sent[-1].data)
    folder = Path(completed.folder)
    on_disk = tree_hashes(folder)
    assert on_disk == {**{f.path: f.sha256 for f in completed.files}, MANIFEST: completed.manifest_sha256}
    assert {f.path for f in completed.files} == {i.path for i in plan.items if i.category != "link"}
    requests = await entries(redis, keys, verifier, "sympy", first.id)
    assert len(requests) == 5 and all(r.causation_id == first.id for r in requests), "one per kernel"

    second = locked(plan, tmp_path / "two")
    sent_again = await generate(publisher, redis, keys, verifier, second)
    again = GenerationCompleted.model_validate(sent_again[-1].data)
    assert again.files == completed.files, "the same files, byte for byte"
    manifests = [json.loads((Path(c.folder) / MANIFEST).read_text()) for c in (completed, again)]
    assert manifests[0]["run"] == first.id and manifests[1]["run"] == second.id
    differing = {k for k in manifests[0] if manifests[0][k] != manifests[1][k]}
    assert differing <= {"run", "generated_at"} and "run" in differing
    assert generator.terminate() == 0
    events = [e for e in generator.log_events() if e.get("event") == "generator.completed"]
    assert len(events) == 2, events
    print(f"\ngeneration of the 5-agent sample: {[e['seconds'] for e in events]} s (first, second)")


async def test_two_generated_agents_exchange_envelopes_and_their_relay_ends(
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
    main = spawn("L9.agents.main.agent_controller:MainAgent", env=env)
    inputs = {"w1": 0.5, "w2": -0.25, "x": 1.5, "y": 2.0, "a1": 1.0, "a2": 0.0, "b1": 0.6, "b2": 0.8}
    typed = {"request_id": "r-1", "tags": ["urgent"]}  # what l9.scores.computed.v1 declares beside them
    root = PacketEnvelope.new(
        type="l9.tensoraios.score.v1", source="agent://test/0", data={**inputs, **typed, "task": "t-1"}
    )
    await Publisher(redis, keys, signer).publish(root)

    async def counts() -> tuple[int, ...]:
        streams = ("tensoraios", "scores", "decisions")
        return tuple([len(await entries(redis, keys, verifier, s, root.id)) for s in streams])

    async def relay_ended() -> bool:
        bound = any(e.get("event") == "agent.relay_bound" for e in core.log_events())
        return bound and await counts() == (3, 4, 2)

    await wait_for(relay_ended, timeout=60)
    await anyio.sleep(0.5)
    assert await counts() == (3, 4, 2), "nothing more after the hop bound"
    decisions = await entries(redis, keys, verifier, "decisions", root.id)
    scores = await entries(redis, keys, verifier, "scores", root.id)
    asks = await entries(redis, keys, verifier, "tensoraios", root.id)
    assert [e.data.get("hops", 0) for e in asks] == [0, 2, 4], "the root, then main_agent's two relays"
    assert sorted(e.data["hops"] for e in scores) == [1, 1, 3, 3], "computed and embedded, twice"
    computed = {e.id: e for e in scores if e.type == "l9.scores.computed.v1"}
    assert [d.data["hops"] for d in decisions] == [2, 4], "main_agent relays each score; hop 4 is the last"
    first = decisions[0]
    assert first.source.startswith("agent://main_agent/") and first.causation_id in computed
    assert computed[first.causation_id].causation_id == root.id
    assert computed[first.causation_id].source.startswith("agent://tensoraios/")
    # l9.scores.computed.v1 is typed (the sample's streams.fields): it carries its declared fields only
    assert first.data["request_id"] == "r-1" and first.data["tags"] == ["urgent"]
    assert "task" not in first.data and "embedding_similarity" not in first.data
    embedded = next(e for e in scores if e.type == "l9.scores.embedded.v1")
    assert embedded.data["task"] == "t-1" and embedded.data["embedding_similarity"] == pytest.approx(0.6)
    assert first.data["tensor_score"] == pytest.approx(1 / (1 + 2.718281828459045 ** -(0.5 * 1.5 - 0.25 * 4)))
    for stream in ("scores", "tensoraios", "decisions"):
        assert await redis.xlen(keys.dead(stream)) == 0, f"nothing dead-lettered on {stream}"
    assert core.terminate() == 0 and main.terminate() == 0


async def test_without_a_sympy_worker_the_run_fails_at_the_deadline(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    tmp_path: Path,
) -> None:
    generator = spawn("generator", env={"L9_GENERATOR_SYMPY_DEADLINE_S": "2"})
    cause = locked(lock(load_file(SAMPLE)), tmp_path / "out")
    await Publisher(redis, keys, signer).publish(cause)

    async def ended() -> list[PacketEnvelope]:
        found = await entries(redis, keys, verifier, "run", cause.id)
        return found

    await wait_for(ended, timeout=60)
    failed = await entries(redis, keys, verifier, "generate", cause.id)
    assert [e.type for e in failed] == ["l9.generate.failed.v1"]
    errors = failed[0].data["errors"]
    assert len(errors) == 2 and all("did not answer generate_code within 2 s" in e for e in errors), errors
    assert errors[0].startswith("agent 'tensoraios' kernel 'embedding_similarity'")
    run = (await ended())[0]
    assert (run.data["result"], run.data["phase"]) == ("failed", "generate")
    requests = await entries(redis, keys, verifier, "sympy", cause.id)
    waited = (failed[0].time - min(r.time for r in requests)).total_seconds()
    assert 2.0 <= waited < 5.0, f"failed {waited:.2f} s after asking, the deadline is 2 s"
    assert not await anyio.Path(tmp_path / "out").exists(), "nothing is written"
    assert generator.terminate() == 0
