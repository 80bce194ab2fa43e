"""Lineage projection into FalkorDB: batched UNWIND MERGEs against one MERGE per envelope.

    .venv/bin/python -m benchmarks.graph_projection [--envelopes 5000] [--batch 500] [--lineages 300]

Prints one JSON object on stdout; progress goes to stderr.

Method. ``--envelopes`` envelope nodes in causal chains of 5 (request -> ... ->
the fifth, one run each) are projected as the lineage projector does: batches
of ``--batch`` rows, one ``UNWIND`` query for the envelopes (with their runs and
agents) and one for their causes (``SemanticGraph.project_envelopes``). The
baseline, in the same run on the same server, projects the same envelopes one
at a time (the same two queries with one row each), into a graph of its own.
Then the batched projection runs again over the same envelopes (a redelivery):
its time, and whether any node or edge count changed. Last, ``--lineages``
``SemanticGraph.lineage`` walks of a chain's last envelope (depth 4): p50/p95.
Uses ``REDIS_URL`` if set, else starts the embedded stack in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from l9.logs import configure_logging
from memory.graph import EnvelopeNode, SemanticGraph
from memory.graph.falkordb import FalkorBackend

CHAIN = ("request", "research", "locked", "generated", "enforced")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def envelopes(n: int) -> list[EnvelopeNode]:
    nodes: list[EnvelopeNode] = []
    while len(nodes) < n:
        run, cause = str(uuid.uuid4()), None
        for i, step in enumerate(CHAIN):
            node_id = run if i == 0 else str(uuid.uuid4())
            nodes.append(
                EnvelopeNode(
                    node_id, f"l9.bench.{step}.v1", "event", step, f"agent://{step}/1",
                    f"2026-01-01T00:00:0{i}.000000+00:00", "bench", run, cause,
                )
            )  # fmt: skip
            cause = node_id
    return nodes[:n]


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def batched(graph: SemanticGraph, nodes: list[EnvelopeNode], batch: int) -> None:
    for start in range(0, len(nodes), batch):
        await graph.project_envelopes(nodes[start : start + batch])


async def one_by_one(graph: SemanticGraph, nodes: list[EnvelopeNode]) -> None:
    for node in nodes:
        await graph.project_envelopes([node])


async def measure(redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    fast = SemanticGraph(FalkorBackend.from_url(redis_url, f"{namespace}:graph"), namespace)
    slow = SemanticGraph(FalkorBackend.from_url(redis_url, f"{namespace}:baseline"), namespace)
    nodes = envelopes(args.envelopes)
    try:
        progress(f"batched projection of {len(nodes)} envelopes ({args.batch} per batch)")
        batched_s = await timed(lambda: batched(fast, nodes, args.batch))
        counts = await fast.counts()
        progress("baseline: one envelope per query")
        baseline_s = await timed(lambda: one_by_one(slow, nodes))
        same_graph = await slow.counts() == counts
        progress("re-projecting the same envelopes")
        again_s = await timed(lambda: batched(fast, nodes, args.batch))
        unchanged = await fast.counts() == counts
        lasts = [n.id for i, n in enumerate(nodes) if i % len(CHAIN) == len(CHAIN) - 1]
        walks = []
        for envelope_id in lasts[: args.lineages]:
            started = time.perf_counter()
            await fast.lineage(envelope_id)
            walks.append((time.perf_counter() - started) * 1000)
    finally:
        for graph in (fast, slow):
            await graph.clear()
            await graph.close()
    q = statistics.quantiles(walks, n=100)
    return {
        "envelopes": len(nodes),
        "batch": args.batch,
        "batched_envelopes_per_s": round(len(nodes) / batched_s),
        "baseline_one_by_one_envelopes_per_s": round(len(nodes) / baseline_s),
        "speedup": round(baseline_s / batched_s, 1),
        "baseline_builds_the_same_graph": same_graph,
        "reprojection_envelopes_per_s": round(len(nodes) / again_s),
        "reprojection_changes_counts": not unchanged,
        "counts": counts.as_dict(),
        "lineage_depth_4_ms": {"p50": round(q[49], 3), "p95": round(q[94], 3), "n": len(walks)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envelopes", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--lineages", type=int, default=300)
    args = parser.parse_args()
    configure_logging("warning")  # structlog to stderr: stdout carries only the JSON
    redis_url, stack, home = os.environ.get("REDIS_URL"), None, None
    if not redis_url:
        from l9.devstack import EmbeddedStack

        progress("starting the embedded stack (REDIS_URL not set)")
        home = Path(tempfile.mkdtemp(prefix="l9bench-"))
        stack = EmbeddedStack(home)
        redis_url = stack.up().redis_url
    try:
        result = anyio.run(measure, redis_url, args)
    finally:
        if stack is not None:
            stack.down()
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
