"""``l9 agent run planner`` as a real process: extraction requests in, phase 0-1 envelopes out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agents.extraction import (
    ExtractRequest,
    PlanBaseline,
    PlanLocked,
    PlanRejected,
    PlanResearch,
    SchemaParsed,
    load_file,
    lock,
)
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode
from tests.conftest import AgentProcess, free_port, stream_entries, wait_for

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def request_envelope(path: Path) -> PacketEnvelope:
    request = ExtractRequest.of_text(path.read_text(), path.name, "user:integration-test")
    return PacketEnvelope.new(
        type="l9.extract.request.v1", source="agent://cli/test", data=request.model_dump(mode="json")
    )


async def run_of(
    redis: RedisClient, keys: Keys, verifier: Verifier, run: str
) -> list[tuple[PacketEnvelope, Payload]]:
    """Every envelope of ``run`` on the schema and plan streams, in the order published."""
    found = []
    for stream in ("schema", "plan"):
        for _, fields in stream_entries(await redis.xrange(keys.stream(stream))):
            envelope, payload = decode(fields, verifier)
            if envelope.correlation_id == run:
                found.append((envelope, payload))
    return sorted(found, key=lambda pair: pair[0].sequence or 0)


async def test_the_planner_locks_a_valid_collection_and_rejects_a_cycle(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    planner = spawn("planner")
    publisher = Publisher(redis, keys, signer)
    good = request_envelope(EXAMPLES / "tensoraios_ecosystem.md")
    bad = request_envelope(EXAMPLES / "broken" / "cycle.yaml")
    await publisher.publish(good)
    await publisher.publish(bad)

    async def finished() -> bool:
        last = [await run_of(redis, keys, verifier, run) for run in (good.id, bad.id)]
        return all(pairs and isinstance(pairs[-1][1], PlanLocked | PlanRejected) for pairs in last)

    await wait_for(finished, timeout=60)
    locked_run = await run_of(redis, keys, verifier, good.id)
    assert [type(p) for _, p in locked_run] == [SchemaParsed, PlanResearch, PlanBaseline, PlanLocked]
    assert all(e.causation_id == good.id and e.source.startswith("agent://planner/") for e, _ in locked_run)
    baseline, locked = locked_run[2][1], locked_run[3][1]
    assert isinstance(baseline, PlanBaseline)
    assert baseline.ok, baseline.checks
    assert isinstance(locked, PlanLocked)
    assert locked.hash == lock(load_file(EXAMPLES / "tensoraios_ecosystem.md")).hash

    rejected_run = await run_of(redis, keys, verifier, bad.id)
    assert [type(p) for _, p in rejected_run] == [SchemaParsed, PlanResearch, PlanRejected]
    rejected = rejected_run[-1][1]
    assert isinstance(rejected, PlanRejected) and rejected.stage == "research"
    assert [e.text for e in rejected.errors] == [
        "cycle.yaml:8 agent 'ingest': depends_on.hard forms a cycle: ingest -> score -> report -> ingest",
        "cycle.yaml:35 agent 'watchdog': depends_on.hard forms a cycle: watchdog -> watchdog",
    ]
    assert planner.terminate() == 0
    assert any(e.get("event") == "planner.planned" for e in planner.log_events())


async def test_a_configured_graph_store_that_is_away_fails_the_baseline(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """The agents need a graph store; the one configured (``L9_GRAPH_URL``) does not answer, though
    the bus's Redis has FalkorDB: the baseline asks the configured one and the run is rejected."""
    graph_url = f"redis://127.0.0.1:{free_port()}/0"
    planner = spawn("planner", env={"L9_GRAPH_URL": graph_url, "L9_GRAPH_TIMEOUT_S": "1"})
    request = request_envelope(EXAMPLES / "tensoraios_ecosystem.md")
    await Publisher(redis, keys, signer).publish(request)

    async def finished() -> bool:
        pairs = await run_of(redis, keys, verifier, request.id)
        return bool(pairs) and isinstance(pairs[-1][1], PlanLocked | PlanRejected)

    await wait_for(finished, timeout=60)
    run = await run_of(redis, keys, verifier, request.id)
    assert [type(p) for _, p in run] == [SchemaParsed, PlanResearch, PlanBaseline, PlanRejected]
    baseline = run[2][1]
    assert isinstance(baseline, PlanBaseline) and not baseline.ok
    failed = {c.target: c.detail for c in baseline.checks if not c.ok}
    assert set(failed) == {"graph"}, baseline.checks
    assert planner.terminate() == 0
    assert any(e.get("event") == "graph.write_failed" for e in planner.log_events()), (
        "the research DAG's write to the graph store that is away failed without holding the planner up"
    )
