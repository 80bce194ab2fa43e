"""benchmarks/cluster.py at a tiny size: it starts its own standalone Redis and local cluster,
measures both, and every envelope it publishes is consumed exactly once on each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

N = 300
STREAMS = 3


def test_cluster_benchmark_consumes_every_envelope_once_on_both_servers() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "benchmarks.cluster", "--n", str(N), "--consumers", "1", "--reps", "1",
            "--warmup", "0", "--streams", str(STREAMS), "--masters", "3", "--replicas", "0",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)

    for server in ("standalone", "cluster"):
        config = result[server]["c1"]
        assert config["envelopes_per_s"] > 0
        (run,) = config["runs"]
        assert run["server"] == server and run["consumers"] == 1 and run["n"] == N
        assert run["check"] == {
            "handled": N, "acked": N, "xlen": N, "pending": 0, "dead": 0, "exactly_once": True
        }  # fmt: skip
        assert run["consumer_handled_by_process"] == [N]
        assert run["redis_calls_per_envelope"]["xadd"] == 1.0
        for key in ("publisher", "consumer", "redis_master", "total"):
            assert run[f"{key}_cpu_us_per_envelope"] > 0, key
        assert sum(run["streams_per_node"].values()) == STREAMS

    # the cluster's streams are spread over its three masters, one each
    placement = result["stream_placement"]["streams"]
    assert len(placement) == STREAMS
    assert len({s["partition"] for s in placement.values()}) == STREAMS
    assert len({s["node"] for s in placement.values()}) == 3
    assert set(result["cluster"]["c1"]["runs"][0]["streams_per_node"].values()) == {1}
    assert result["cluster_shape"]["masters"] == 3 and result["cluster_shape"]["replicas"] == 0

    ratio = result["ratio"]["c1"]
    assert ratio["envelopes_per_s"] == result["ratio_c1"] > 0
    assert set(result["targets"]) == {"cluster_ratio_c1_ge_0.7", "consumer_cpu_overhead_not_growing"}
    assert result["targets"]["cluster_ratio_c1_ge_0.7"]["value"] == result["ratio_c1"]
    assert isinstance(result["all_targets_met"], bool)

    projection = result["projection"]
    assert projection["per_machine_envelopes_per_s"] > 0
    machines = projection["by_machines_envelopes_per_s"]
    assert machines["3"] == pytest.approx(3 * machines["1"], abs=3)
    assert projection["one_namespace_ceiling_envelopes_per_s"] == pytest.approx(
        64 * projection["one_stream_ceiling_envelopes_per_s"], rel=0.01
    )
