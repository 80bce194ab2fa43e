"""Policy decisions per second on a realistic generated artifact set, and what they add to an extraction.

    .venv/bin/python -m benchmarks.governance [--agents 5] [--modules 12] [--reps 3]

Prints one JSON object on stdout; progress goes to stderr.

The artifact set is what the generator produces per agent: Python modules
rendered from a jinja2 template (config, models, a controller, helpers with
docstrings, dataclasses, subprocess calls without a shell, logging), generated
tests, Markdown docs and YAML manifests; a few artifacts carry a violation
(a TODO, an ``eval``, a token) so every path of the engine runs.

Governance: ``PolicyEngine.evaluate`` on each artifact with the shipped policy
file (one decision per artifact). Baseline, measured in the same run on the
same artifacts: the per-file work of an extraction that policy evaluation adds
to -- render (jinja2), write, sha256 for the manifest, byte-compile every
Python file (validator), and one pytest subprocess per agent on its generated
tests (validator). ``overhead_fraction`` = governance seconds / baseline seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import py_compile
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from envelope import PacketEnvelope
from governance import Artifact, PolicyEngine, SignerACL

TARGET_OVERHEAD = 0.10
TEMPLATES = jinja2.Environment(keep_trailing_newline=True, autoescape=False)
MODULE = TEMPLATES.from_string(
    '''"""{{ agent }}.{{ name }}: {{ summary }}."""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("{{ agent }}.{{ name }}")
{% for c in classes %}

@dataclass
class {{ c }}:
    """A {{ c | lower }} record of {{ agent }}."""

    name: str
    weight: float = 1.0
    tags: list[str] = field(default_factory=list)

    def score(self, x: float, y: float) -> float:
        """The weighted score at (x, y)."""
        total = self.weight * x + (1 - self.weight) * y ** 2
        log.debug("score %s %s -> %s", x, y, total)
        return total

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "weight": self.weight, "tags": self.tags})
{% endfor %}
{% for f in functions %}

def {{ f }}(items: list[dict[str, Any]], limit: int = {{ loop.index * 10 }}) -> list[dict[str, Any]]:
    """Keep the first ``limit`` items whose value is positive, sorted by key."""
    kept = [item for item in items if item.get("value", 0) > 0]
    kept.sort(key=lambda item: str(item.get("key", "")))
    if len(kept) > limit:
        log.info("{{ f }}: %d items over the limit of %d", len(kept), limit)
    return kept[:limit]
{% endfor %}

def run_tool(path: Path) -> str:
    """Version of an external tool, without a shell."""
    done = subprocess.run(["python3", "--version"], capture_output=True, text=True, check=False, cwd=path)
    return done.stdout.strip()
'''
)
TEST = TEMPLATES.from_string(
    '''"""Tests of {{ agent }}.{{ module }}."""

from {{ package }}.{{ module }} import {{ cls }}, {{ func }}


def test_score_is_weighted() -> None:
    assert {{ cls }}("a", weight=1.0).score(2.0, 3.0) == 2.0


def test_filter_keeps_positive_values() -> None:
    items = [{"key": "b", "value": 1}, {"key": "a", "value": 2}, {"key": "c", "value": 0}]
    assert [i["key"] for i in {{ func }}(items)] == ["a", "b"]
'''
)
DOC = "# {agent}: {title}\n\n{body}\n\n## Streams\n\n- consumes `{agent}.in`\n- produces `{agent}.out`\n"
MANIFEST = "name: {agent}\nversion: 1\nstreams:\n  consumes: [{agent}.in]\n  produces: [{agent}.out]\n"
VIOLATIONS = (
    "x = 1  # TODO: decide\n",
    "\n\ndef _later(text: str) -> object:\n    return eval(text)\n",
    "token = 'ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8'\n",
)


@dataclass
class Planned:
    path: str
    kind: str
    text: str
    render_s: float


def plan_agent(agent: str, modules: int, violate: bool) -> list[Planned]:
    out: list[Planned] = []
    package = f"{agent}_pkg"
    for i in range(modules):
        t0 = time.perf_counter()
        text = MODULE.render(
            agent=agent, name=f"m{i}", summary=f"part {i} of {agent}",
            classes=[f"Record{i}{c}" for c in "ABC"], functions=[f"filter_{i}_{k}" for k in range(8)],
        )  # fmt: skip
        if violate and i < len(VIOLATIONS):
            text += VIOLATIONS[i]
        out.append(Planned(f"{package}/m{i}.py", "code", text, time.perf_counter() - t0))
    for i in range(min(3, modules)):
        t0 = time.perf_counter()
        text = TEST.render(
            agent=agent, package=package, module=f"m{i}", cls=f"Record{i}A", func=f"filter_{i}_0"
        )
        out.append(Planned(f"tests_{agent}/test_m{i}.py", "test", text, time.perf_counter() - t0))
    out.append(Planned(f"{package}/__init__.py", "code", f'"""The {agent} package."""\n', 0.0))
    for title in ("Overview", "Operations", "Governance", "API"):
        body = " ".join(f"The {agent} agent handles step {k} of the run." for k in range(40))
        out.append(
            Planned(f"docs/{agent}/{title}.md", "doc", DOC.format(agent=agent, title=title, body=body), 0.0)
        )
    out.append(Planned(f"manifests/{agent}.yaml", "manifest", MANIFEST.format(agent=agent), 0.0))
    return out


def governance_pass(engine: PolicyEngine, planned: list[Planned], agent_of: dict[str, str]) -> dict[str, Any]:
    latencies, outcomes = [], {"allow": 0, "deny": 0, "escalate": 0}
    t0 = time.perf_counter()
    for p in planned:
        s = time.perf_counter()
        decision = engine.evaluate(Artifact(p.path, p.text, kind=p.kind, agent=agent_of[p.path]))
        latencies.append(time.perf_counter() - s)
        outcomes[decision.outcome.value] += 1
    seconds = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    return {
        "seconds": seconds,
        "outcomes": outcomes,
        "p50_ms": round(ms[len(ms) // 2], 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
    }


def baseline_pass(planned: list[Planned], agents: list[str], root: Path) -> dict[str, float]:
    """Render (measured at planning), write, hash, byte-compile, and pytest per agent."""
    render = sum(p.render_s for p in planned)
    t0 = time.perf_counter()
    manifest = {}
    for p in planned:
        target = root / p.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(p.text)
        manifest[p.path] = hashlib.sha256(p.text.encode()).hexdigest()
        if p.path.endswith(".py"):
            py_compile.compile(str(target), doraise=True)
    files = time.perf_counter() - t0
    t1 = time.perf_counter()
    for agent in agents:
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / f"tests_{agent}")],
            env=env, cwd=root, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"generated tests of {agent} failed:\n{done.stdout}{done.stderr}")
    tests = time.perf_counter() - t1
    return {"render_s": render, "files_s": files, "tests_s": tests, "seconds": render + files + tests}


def policy_shares(engine: PolicyEngine, planned: list[Planned]) -> dict[str, float]:
    """Seconds each enabled policy's rule takes over the whole set."""
    out = {}
    for policy in engine.policies:
        t0 = time.perf_counter()
        for p in planned:
            artifact = Artifact(p.path, p.text, kind=p.kind)
            if policy.applies_to_artifact(artifact):
                policy.rule.artifact(artifact)
        out[policy.ref] = round(time.perf_counter() - t0, 4)
    return out


def acl_check_ns(n: int = 200_000) -> float:
    acl = SignerACL({"planner": ["l9.plan.*"], "generator": ["l9.artifact.*"]})
    envelope = PacketEnvelope.new(
        type="l9.plan.locked.v1", source="agent://p/p-0", key_id="planner", signature="0"
    )
    t0 = time.perf_counter()
    for _ in range(n):
        acl.authorize(envelope)
    return round((time.perf_counter() - t0) / n * 1e9, 1)


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=5, help="agents in the generated collection")
    parser.add_argument("--modules", type=int, default=12, help="Python modules per agent")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each pass (best is reported)")
    args = parser.parse_args(argv)
    from l9.logs import configure_logging

    configure_logging("warning")
    engine = PolicyEngine.load()
    agents = [f"agent{i}" for i in range(args.agents)]
    planned = [p for i, a in enumerate(agents) for p in plan_agent(a, args.modules, violate=i == 0)]
    agent_of = {p.path: p.path.split("/")[0].removesuffix("_pkg").removeprefix("tests_") for p in planned}
    progress(f"{len(planned)} artifacts, {sum(len(p.text) for p in planned) / 1e6:.2f} MB, {args.reps} reps")
    gov, base = [], []
    for rep in range(args.reps):
        gov.append(governance_pass(engine, planned, agent_of))
        with tempfile.TemporaryDirectory(prefix="l9govbench-") as tmp:
            base.append(baseline_pass(planned, agents, Path(tmp)))
        progress(
            f"rep {rep + 1}: governance {gov[-1]['seconds']:.3f} s, baseline {base[-1]['seconds']:.3f} s"
        )
    g = min(gov, key=lambda r: r["seconds"])
    b = min(base, key=lambda r: r["seconds"])
    result = {
        "decisions_per_s": round(len(planned) / g["seconds"], 1),
        "overhead_fraction": round(g["seconds"] / b["seconds"], 4),
        "target_overhead_fraction": TARGET_OVERHEAD,
        "target_met": g["seconds"] / b["seconds"] <= TARGET_OVERHEAD,
        "artifacts": len(planned),
        "bytes": sum(len(p.text.encode()) for p in planned),
        "outcomes": g["outcomes"],
        "decision_p50_ms": g["p50_ms"],
        "decision_p99_ms": g["p99_ms"],
        "governance_seconds": round(g["seconds"], 4),
        "baseline_seconds": {k: round(v, 4) for k, v in b.items()},
        "overhead_vs_files_only": round(g["seconds"] / (b["render_s"] + b["files_s"]), 3),
        "runs_governance_s": [round(r["seconds"], 4) for r in gov],
        "runs_baseline_s": [round(r["seconds"], 4) for r in base],
        "median_overhead_fraction": round(
            statistics.median(x["seconds"] for x in gov) / statistics.median(x["seconds"] for x in base), 4
        ),
        "policy_seconds": policy_shares(engine, planned),
        "signer_acl_check_ns": acl_check_ns(),
        "method": (
            "best of reps for each side; governance = PolicyEngine.evaluate per artifact (shipped policy); "
            "baseline = jinja2 render + write + sha256 + py_compile + one pytest subprocess per agent"
        ),
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
