"""Phase 1 baseline against the real embedded Redis (with the graph module) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.contracts.extraction.baseline import baseline_errors, run_baseline, stack_probes
from agents.extraction import load_file
from governance import load_policy_file
from l9.devstack import StackEndpoints
from l9.settings import Settings
from memory.graph import GraphUnavailable
from tests.conftest import free_port

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def test_the_seed_ecosystem_passes_its_baseline_on_the_real_stack(stack: StackEndpoints) -> None:
    collection = load_file(EXAMPLES / "tensoraios_ecosystem.md")
    anchors = {a.name for a in load_policy_file().anchors}
    baseline = await run_baseline(
        collection, probes=stack_probes(stack.redis_url, stack.database_url), anchors=anchors
    )
    assert baseline.ok, baseline.failures()
    backends = {c.target: c.detail for c in baseline.checks if c.check == "memory_backend"}
    assert set(backends) == {"redis", "postgres", "graph"}
    assert all(detail.startswith("reachable (") for detail in backends.values())


async def test_a_backend_that_is_not_there_fails_with_the_drivers_reason(stack: StackEndpoints) -> None:
    collection = load_file(EXAMPLES / "tensoraios_ecosystem.md")
    probes = stack_probes(f"redis://127.0.0.1:{free_port()}/0", stack.database_url)
    baseline = await run_baseline(collection, probes=probes, anchors={"Igor", "Compliance"})
    failed = {c.target: c.detail for c in baseline.failures()}
    assert set(failed) == {"redis", "graph"}, "PostgreSQL is up; both Redis probes fail"
    assert all("ConnectionError" in detail for detail in failed.values())
    errors = [str(e) for e in baseline_errors(collection, baseline, {"Igor", "Compliance"})]
    assert errors[0].startswith(
        "tensoraios_ecosystem.md:34 agent 'tensoraios': memorytopology.workingmemory.storagetype"
        " needs the redis backend, which failed its baseline check: ConnectionError"
    )


@pytest.mark.parametrize("where", ["L9_GRAPH_URL", "NEO4J_URL"])
async def test_the_graph_probe_asks_the_configured_graph_store(stack: StackEndpoints, where: str) -> None:
    """With a graph store of its own configured, the bus Redis having FalkorDB proves nothing:
    the probe queries the configured store (here, on a port nobody listens on)."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0" if where == "L9_GRAPH_URL" else f"bolt://127.0.0.1:{port}"
    settings = Settings.model_validate({"graph_url" if where == "L9_GRAPH_URL" else "neo4j_url": url})
    probes = stack_probes(stack.redis_url, stack.database_url, settings)
    await probes["redis"]()
    with pytest.raises(GraphUnavailable):
        await probes["graph"]()
    await stack_probes(stack.redis_url, stack.database_url, Settings.model_validate({}))["graph"]()
