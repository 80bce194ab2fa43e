"""Phase 1 baseline: memory backends through injected probes, hard dependencies, governance anchors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import anyio

from agents.contracts.extraction.baseline import Probe, backend_users, baseline_errors, run_baseline
from agents.extraction import Collection, load_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ANCHORS = {"Igor", "Compliance"}


async def fine() -> None:
    return None


def probes(**overrides: Probe) -> dict[str, Probe]:
    return {"redis": fine, "postgres": fine, "graph": fine, **overrides}


def tensoraios() -> Collection:
    return load_file(EXAMPLES / "tensoraios_ecosystem.md")


async def test_every_check_passes_on_a_healthy_stack() -> None:
    baseline = await run_baseline(tensoraios(), probes=probes(), anchors=ANCHORS)
    assert baseline.ok and baseline.failures() == []
    assert [(c.check, c.target) for c in baseline.checks][:3] == [
        ("memory_backend", "redis"),
        ("memory_backend", "postgres"),
        ("memory_backend", "graph"),
    ]
    by_target = {(c.check, c.target): c.detail for c in baseline.checks}
    assert (
        by_target["memory_backend", "graph"]
        == "reachable (semanticmemory of tensoraios, causalmemory of tensor_auditor)"
    )
    assert by_target["hard_dependencies", "plastos_adapter"] == "present: main_agent, tensoraios"
    assert by_target["hard_dependencies", "tensoraios"] == "none"
    assert by_target["governance_anchors", "tensor_auditor"] == "configured: Compliance, Igor"
    assert len(baseline.checks) == 3 + 5 + 5


async def test_an_unreachable_backend_fails_at_the_first_layer_using_it() -> None:
    async def refused() -> None:
        raise ConnectionError("Connection refused")

    collection = tensoraios()
    baseline = await run_baseline(collection, probes=probes(postgres=refused), anchors=ANCHORS)
    assert not baseline.ok
    assert [(c.target, c.detail) for c in baseline.failures()] == [
        ("postgres", "ConnectionError: Connection refused")
    ]
    assert [str(e) for e in baseline_errors(collection, baseline, ANCHORS)] == [
        "tensoraios_ecosystem.md:37 agent 'tensoraios': memorytopology.episodicmemory.storagetype needs the"
        " postgres backend, which failed its baseline check: ConnectionError: Connection refused"
    ]


async def test_a_hanging_probe_times_out_and_a_backend_without_probe_fails() -> None:
    async def hangs() -> None:
        await anyio.sleep(60)

    baseline = await run_baseline(
        tensoraios(), probes={"redis": fine, "graph": hangs}, anchors=ANCHORS, timeout_s=0.05
    )
    failed = {c.target: c.detail for c in baseline.failures()}
    assert failed == {
        "graph": "timed out after 0.05s",
        "postgres": "no probe for this backend (episodicmemory of tensoraios, episodicmemory of main_agent,"
        " episodicmemory of tensor_trainer, episodicmemory of tensor_auditor)",
    }


async def test_probes_run_concurrently() -> None:
    released = anyio.Event()

    async def waits() -> None:
        await released.wait()

    async def releases() -> None:
        released.set()

    baseline = await run_baseline(
        tensoraios(), probes=probes(redis=waits, graph=releases), anchors=ANCHORS, timeout_s=5
    )
    assert baseline.ok, "the redis probe only returns if the graph probe runs while it waits"


async def test_anchors_the_policy_does_not_configure_are_errors_at_their_lines() -> None:
    collection = tensoraios()
    baseline = await run_baseline(collection, probes=probes(), anchors={"Igor"})
    assert [(c.target, c.detail) for c in baseline.failures()] == [
        ("tensoraios", "not configured: Compliance (configured: Igor)"),
        ("plastos_adapter", "not configured: Compliance (configured: Igor)"),
        ("tensor_auditor", "not configured: Compliance (configured: Igor)"),
    ]
    errors = [str(e) for e in baseline_errors(collection, baseline, {"Igor"})]
    assert errors[0] == (
        "tensoraios_ecosystem.md:29 agent 'tensoraios': governance.anchors"
        " names anchor 'Compliance', which the governance policy does not configure"
    )
    assert len(errors) == 3


async def test_a_missing_hard_dependency_fails_its_check() -> None:
    full = tensoraios()
    without_main = replace(full, agents=tuple(a for a in full.agents if a.name != "main_agent"))
    baseline = await run_baseline(without_main, probes=probes(), anchors=ANCHORS)
    assert [(c.check, c.target, c.detail) for c in baseline.failures()] == [
        ("hard_dependencies", "plastos_adapter", "not in the collection: main_agent")
    ]
    assert [str(e) for e in baseline_errors(without_main, baseline, ANCHORS)] == [
        "tensoraios_ecosystem.md:118 agent 'plastos_adapter': depends_on.hard"
        " names 'main_agent', which is not an agent of the collection"
    ]


def test_backends_are_grouped_by_storage_type() -> None:
    users = backend_users(tensoraios())
    assert list(users) == ["redis", "postgres", "graph"]
    assert users["redis"][0] == ("tensoraios", "workingmemory")
