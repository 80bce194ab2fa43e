"""The generator's rendering: every planned file, byte-identical, ruff-clean, allowed, and tested.

Kernels are computed here with the SymPy worker's own code generator in-process
(:func:`local_kernels`), exactly what the worker answers over the bus.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from agents.extraction import LockedPlan, load_collection, load_file, lock
from agents.extraction.generator import KernelSource, RenderError, render_agent, render_plan, write_folder
from agents.extraction.validator.tests_run import TestRun, run_tests
from agents.sympy.codegen import generate
from agents.sympy.parser import canonical_hash, parse
from governance import Artifact, ArtifactSet, PolicyEngine

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
#: Two agents exercising what the sample does not: modules a kind writes into the agent module
#: (no payloads/settings/governance files), a kernel over ``math`` (erf), a long expression, a
#: constant kernel, nested packages, a second top-level package, one type declared by both.
EDGES = """
system: Lonely Listener
module: edge
name: agent
role: Listens to one type and emits nothing
rootpath: edge/lonely
governance: {anchors: [Igor]}
cursorinstructions:
  generatefiles: [agent.py, test_lonely.py]
streams:
  consumes: [l9.edge.signal.v1]
---
system: "Numeric \\"Edge\\" Service"
module: edge.numeric
name: numeric_agent
role: Relays signals with a normal CDF, a long polynomial and a constant
rootpath: other/numeric
depends_on: {hard: [agent]}
governance:
  anchors: [Igor, Compliance]
  escalationpolicy: >-
    A very long escalation policy that certainly does not fit on one line of one hundred and ten
    characters
  auditscope: [cdf values]
memorytopology:
  workingmemory:
    storagetype: redis
    settings: {prefix: "a\\\\b \\"quoted\\"", enabled: true, ratio: 0.25, ttl_s: 30}
cursorinstructions:
  generatefiles:
    - __init__.py
    - sub/__init__.py
    - settings.py
    - numeric_controller.py
    - kernels.py
    - __main__.py
    - test_numeric.py
    - test_kernels.py
  generatedocs: [README.md, API.md, CONFIG.md, GOVERNANCE.md, INTEGRATION.md, KERNELS.md, DEPLOYMENT.md,
                 ARCHITECTURE.md]
  linkexisting: [edge/lonely/agent.py, bus.keys]
deployment: {replicas: 3, concurrency: 2, endpoints: ["http://numeric.local:8080/health"]}
streams:
  consumes: [l9.edge.signal.v1]
  produces: [l9.edge.cdf.v1, l9.edge.signal.v1]
expressions:
  cdf: "(1 + erf((x - mu)/(sigma*sqrt(2))))/2"
  long_poly: >-
    alpha_one*x**7 + beta_two*x**6 + gamma_three*x**5 + delta_four*x**4 + epsilon_five*x**3
    + zeta_six*x**2 + eta_seven*x + theta_eight*exp(x)
  tau: "2*pi"
"""


def local_kernels(plan: LockedPlan) -> dict[str, dict[str, KernelSource]]:
    """What the SymPy worker answers ``generate_code(formula, "python", name="result")`` with."""
    out: dict[str, dict[str, KernelSource]] = {}
    for agent in plan.agents:
        out[agent.name] = {}
        for name, formula in sorted(agent.expressions.items()):
            expr = parse(formula)
            code = generate(expr, "python", "result", None, True)
            out[agent.name][name] = KernelSource(
                name=name,
                formula=formula,
                args=tuple(code["args"]),
                params=tuple(code["params"]),
                source=code["source"],
                ops_before=code["ops_before"],
                ops_after=code["ops_after"],
                expr_hash=canonical_hash(expr),
            )
    return out


@pytest.fixture(scope="module")
def sample() -> tuple[LockedPlan, dict[str, bytes]]:
    plan = lock(load_file(SAMPLE))
    return plan, render_plan(plan, local_kernels(plan))


@pytest.fixture(scope="module")
def edges() -> tuple[LockedPlan, dict[str, bytes]]:
    plan = lock(load_collection(EDGES, "edges.yaml"))
    return plan, render_plan(plan, local_kernels(plan))


def planned_files(plan: LockedPlan) -> set[str]:
    return {item.path for item in plan.items if item.category != "link"}


def test_the_sample_renders_every_planned_file_and_nothing_else(
    sample: tuple[LockedPlan, dict[str, bytes]],
) -> None:
    plan, files = sample
    assert set(files) == planned_files(plan)
    assert len(files) == 59
    assert not any(path.startswith(("code/L9/__init__", "code/L9/core/__init__")) for path in files)
    assert all(data.endswith(b"\n") and not data.endswith(b"\n\n") for data in files.values())


def test_rendering_is_byte_identical_across_processes(sample: tuple[LockedPlan, dict[str, bytes]]) -> None:
    """Same plan, other interpreters with other hash seeds (set order): the same bytes."""
    plan, files = sample
    assert render_plan(plan, local_kernels(plan)) == files
    script = (
        "import hashlib, json, sys\n"
        "from pathlib import Path\n"
        "from agents.extraction import load_file, lock\n"
        "from agents.extraction.generator import render_plan\n"
        "from tests.unit.test_generator import local_kernels\n"
        "plan = lock(load_file(Path(sys.argv[1])))\n"
        "files = render_plan(plan, local_kernels(plan))\n"
        "print(json.dumps({p: hashlib.sha256(b).hexdigest() for p, b in files.items()}))\n"
    )
    expected = {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
    for seed in ("4242",):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", script, str(SAMPLE)], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == expected


def test_every_generated_python_file_compiles_and_imports_only_what_is_allowed(
    sample: tuple[LockedPlan, dict[str, bytes]], edges: tuple[LockedPlan, dict[str, bytes]]
) -> None:
    allowed_top = {"agents", "bus", "envelope", "governance", "l9", "memory", "pydantic", "pydantic_settings"}
    allowed_top |= {"numpy", "structlog", "anyio", "pytest", "L9", "edge", "other"}
    allowed_top |= {"sympy", "mpmath"}  # the kernel tests' high-precision reference (mpmath: SymPy's own)
    for _, files in (sample, edges):
        for path, data in files.items():
            if not path.endswith(".py"):
                continue
            tree = ast.parse(data, filename=path)
            compile(tree, path, "exec")
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    assert top in allowed_top or top in sys.stdlib_module_names, (path, name)


def test_each_file_imports_what_its_plan_item_says(sample: tuple[LockedPlan, dict[str, bytes]]) -> None:
    plan, files = sample
    for item in plan.items:
        if item.category != "file":
            continue
        tree = ast.parse(files[item.path])
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {
            f"{n.module}.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names
        }
        missing = [m for m in item.imports if m not in imported]
        assert not missing, (item.path, missing)


def test_the_governance_policies_allow_every_artifact(
    sample: tuple[LockedPlan, dict[str, bytes]], edges: tuple[LockedPlan, dict[str, bytes]]
) -> None:
    engine = PolicyEngine.load(strict_mode=True)
    for plan, files in (sample, edges):
        kinds = {item.path: item.kind for item in plan.items}
        artifacts = [Artifact(path, data, agent=kinds[path]) for path, data in files.items()]
        for artifact in artifacts:
            decision = engine.evaluate(artifact)
            assert decision.allowed, decision.reason
        assert engine.evaluate(ArtifactSet(artifacts)).allowed


def test_the_governance_bridge_holds_the_schema_constants(
    sample: tuple[LockedPlan, dict[str, bytes]],
) -> None:
    plan, files = sample
    for agent in plan.agents:
        bridge = next((i.path for i in plan.items_of(agent.name) if i.kind == "governance"), None)
        if bridge is None:
            continue
        values = {
            node.target.id: ast.literal_eval(node.value)
            for node in ast.parse(files[bridge]).body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value
        }
        assert values["ANCHORS"] == agent.governance.anchors
        assert values["ESCALATION_POLICY"] == agent.governance.escalationpolicy
        assert values["AUDIT_SCOPE"] == agent.governance.auditscope


def test_the_agent_manifests_list_the_other_files_with_their_hashes(
    sample: tuple[LockedPlan, dict[str, bytes]],
) -> None:
    plan, files = sample
    for agent in plan.agents:
        manifest = json.loads(files[f"manifests/{agent.name}_manifest.json"])
        others = sorted(i.path for i in plan.items_of(agent.name) if i.category in ("file", "doc"))
        assert [f["path"] for f in manifest["files"]] == others
        for entry in manifest["files"]:
            data = files[entry["path"]]
            assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert manifest["plan_hash"] == plan.hash and "generated_at" not in manifest


def write(tmp_path: Path, files: Mapping[str, bytes]) -> Path:
    folder = tmp_path / "extraction"
    write_folder(folder, files)
    return folder


@pytest.mark.parametrize("cwd_is_root", [True, False])
def test_ruff_accepts_the_generated_code(
    tmp_path: Path,
    sample: tuple[LockedPlan, dict[str, bytes]],
    edges: tuple[LockedPlan, dict[str, bytes]],
    cwd_is_root: bool,
) -> None:
    """Wherever ruff runs from (first-party packages depend on it), with the project's config."""
    folders = [write(tmp_path / name, files) for name, (_, files) in (("sample", sample), ("edges", edges))]
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(ROOT / "pyproject.toml")]
    out = subprocess.run(
        [*command, *map(str, folders)],
        cwd=ROOT if cwd_is_root else tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


async def run_generated_tests(folder: Path) -> TestRun:
    """The generated tests run exactly as the validator runs them (its own function)."""
    run = await run_tests(folder, timeout_s=300)
    assert run.problem is None and run.exit_code == 0, run
    return run


async def test_the_generated_tests_pass_with_coverage_as_the_validator_runs_them(
    tmp_path: Path, sample: tuple[LockedPlan, dict[str, bytes]]
) -> None:
    run = await run_generated_tests(write(tmp_path, sample[1]))
    assert run.tests >= 60 and run.passed == run.tests, run
    assert run.coverage_percent >= 85.0


async def test_the_edge_agents_render_and_their_tests_pass(
    tmp_path: Path, edges: tuple[LockedPlan, dict[str, bytes]]
) -> None:
    plan, files = edges
    assert set(files) == planned_files(plan)
    kernels = files["code/other/numeric/kernels.py"].decode()
    # (1 + erf(u))/2 is written as erfc(-u)/2: 1 + erf(u) cancels to 0 where u is very negative
    assert "0.5 * numpy.vectorize(math.erfc, otypes=[float])(-(" in kernels
    assert "Stable forms: erfc." in kernels
    assert "def tau() -> FloatArray:" in kernels
    lonely = files["code/edge/lonely/agent.py"].decode()
    assert "class StreamPayload(Payload):" in lonely and "class GovernanceBridge:" in lonely
    assert "class AgentAgent(Agent):" in lonely, "an agent named 'agent' does not shadow the base class"
    run = await run_generated_tests(write(tmp_path, files))
    assert run.tests > 0 and run.passed == run.tests, run
    assert run.coverage_percent >= 85.0


def test_kernel_tests_without_a_kernels_module_are_refused() -> None:
    text = EDGES.replace("    - kernels.py\n", "")
    plan = lock(load_collection(text, "edges.yaml"))
    with pytest.raises(RenderError, match=r"tests kernels, but the agent plans no kernels module"):
        render_agent(plan, "numeric_agent", local_kernels(plan)["numeric_agent"])


@pytest.mark.parametrize("name", ["lambda", "float", "evaluate_all"])
def test_a_kernel_named_like_a_keyword_a_builtin_or_a_helper_is_refused(name: str) -> None:
    text = EDGES.replace("  tau: ", f"  {name}: ")
    plan = lock(load_collection(text, "edges.yaml"))
    with pytest.raises(RenderError, match=rf"expression '{name}' cannot name a Python function"):
        render_agent(plan, "numeric_agent", local_kernels(plan)["numeric_agent"])


def test_a_memory_setting_named_storage_is_refused() -> None:
    text = EDGES.replace("settings: {prefix:", "settings: {storage: x, prefix:")
    plan = lock(load_collection(text, "edges.yaml"))
    with pytest.raises(RenderError, match=r"memorytopology.workingmemory.settings.storage would be"):
        render_agent(plan, "numeric_agent", local_kernels(plan)["numeric_agent"])


def test_missing_kernel_code_is_refused(sample: tuple[LockedPlan, dict[str, bytes]]) -> None:
    plan = sample[0]
    kernels = local_kernels(plan)["tensoraios"]
    del kernels["tensor_score"]
    with pytest.raises(RenderError, match=r"agent 'tensoraios': no code for kernel\(s\) tensor_score"):
        render_agent(plan, "tensoraios", kernels)
