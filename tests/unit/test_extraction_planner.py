"""The planner: DAG, cycles as paths, order with soft ties, waves, the locked plan and its hash."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agents.extraction import (
    CONVENTIONS,
    KINDS,
    Collection,
    Kind,
    LockedPlan,
    SchemaErrors,
    build_plan,
    find_cycles,
    kind_by_convention,
    load_collection,
    load_file,
    lock,
    research,
    text_listing,
    topological_order,
    waves,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SEED_ORDER = ["tensoraios", "main_agent", "plastos_adapter", "tensor_trainer", "tensor_auditor"]


def collection_of(graph: dict[str, tuple[list[str], list[str]]], origin: str = "c.yaml") -> Collection:
    """A YAML list of minimal agents: name -> (hard, soft)."""
    docs = []
    for name, (hard, soft) in graph.items():
        docs.append(
            f"- {{system: {name}, module: m, name: {name}, role: r, rootpath: L9/{name},"
            f" depends_on: {{hard: {hard}, soft: {soft}}}, governance: {{anchors: [Igor]}},"
            f" cursorinstructions: {{generatefiles: [__init__.py]}}}}"
        )
    return load_collection("\n".join(docs).replace("'", "") + "\n", origin)


def rejected(collection: Collection, strict: bool = True) -> list[str]:
    with pytest.raises(SchemaErrors) as caught:
        lock(collection, strict=strict)
    return [str(e) for e in caught.value.errors]


@pytest.fixture(scope="module")
def tensoraios() -> Collection:
    return load_file(EXAMPLES / "tensoraios_ecosystem.md")


# -- phase 0 research --------------------------------------------------------------------------------------


def test_the_seed_ecosystem_is_ordered_and_grouped_in_waves(tensoraios: Collection) -> None:
    found = research(tensoraios)
    assert list(found.order) == SEED_ORDER
    assert found.waves == (
        ("tensoraios",),
        ("main_agent", "tensor_trainer", "tensor_auditor"),
        ("plastos_adapter",),
    )
    assert ("plastos_adapter", "main_agent") in found.hard_edges
    assert found.soft_edges == (("tensor_auditor", "tensor_trainer"),)
    assert ("tensoraios", "governance") in found.external_soft and found.cycles == ()


def test_every_cycle_is_reported_as_a_path_at_its_first_edge() -> None:
    collection = load_file(EXAMPLES / "broken" / "cycle.yaml")
    found = research(collection)
    assert found.cycles == (("ingest", "score", "report", "ingest"), ("watchdog", "watchdog"))
    assert found.order == () and found.waves == ()
    assert rejected(collection) == [
        "cycle.yaml:8 agent 'ingest': depends_on.hard forms a cycle: ingest -> score -> report -> ingest",
        "cycle.yaml:35 agent 'watchdog': depends_on.hard forms a cycle: watchdog -> watchdog",
    ]
    with pytest.raises(ValueError, match="acyclic"):
        build_plan(collection, found)


def test_a_cycle_starts_at_its_smallest_agent_whatever_the_walk() -> None:
    assert find_cycles({"d": ["b"], "b": ["c"], "c": ["d"], "a": ["d"]}) == [["b", "c", "d", "b"]]
    assert find_cycles({"x": ["y"], "y": ["x", "z"], "z": ["z"]}) == [["x", "y", "x"], ["z", "z"]]
    assert find_cycles({"a": ["b"], "b": []}) == []


def test_soft_dependencies_break_ties_only() -> None:
    # both ready: the one waiting for a soft dependency goes second, whatever the names say
    assert topological_order({"alpha": [], "zeta": []}, {"alpha": ["zeta"]}) == ["zeta", "alpha"]
    # a hard dependency wins over a soft one the other way round
    assert topological_order({"x": ["y"], "y": []}, {"y": ["x"]}) == ["y", "x"]
    # a soft cycle never blocks: names decide
    assert topological_order({"b": [], "a": []}, {"a": ["b"], "b": ["a"]}) == ["a", "b"]
    # a soft dependency that is not ready yet does not hold back a ready agent forever
    hard = {"alpha": [], "omega": [], "zeta": ["omega"]}
    assert topological_order(hard, {"alpha": ["zeta"]}) == ["omega", "zeta", "alpha"]
    # and waves ignore soft dependencies
    assert waves(hard, ["omega", "zeta", "alpha"]) == [["omega", "alpha"], ["zeta"]]


def test_a_diamond_has_three_waves_and_names_break_ties() -> None:
    collection = collection_of(
        {"top": (["left", "right"], []), "right": (["base"], []), "left": (["base"], []), "base": ([], [])}
    )
    found = research(collection)
    assert found.order == ("base", "left", "right", "top")
    assert found.waves == (("base",), ("left", "right"), ("top",))


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    names = draw(st.lists(st.from_regex(r"[a-z]{1,4}", fullmatch=True), min_size=1, max_size=12, unique=True))
    rank = draw(st.permutations(names))  # edges point from later to earlier in this order: acyclic
    hard = {n: sorted(draw(st.sets(st.sampled_from(rank[: rank.index(n)] or [n]))) - {n}) for n in names}
    soft = {n: sorted(draw(st.sets(st.sampled_from(names), max_size=3)) - {n}) for n in names}
    return hard, soft


@settings(max_examples=200, deadline=None)
@given(dags(), st.randoms())
def test_any_dag_is_ordered_after_every_hard_edge_whatever_the_declaration_order(
    graph: tuple[dict[str, list[str]], dict[str, list[str]]], rnd: object
) -> None:
    hard, soft = graph
    order = topological_order(hard, soft)
    assert sorted(order) == sorted(hard)
    position = {name: i for i, name in enumerate(order)}
    assert all(position[d] < position[a] for a, deps in hard.items() for d in deps)
    shuffled = list(hard.items())
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert topological_order(dict(shuffled), soft) == order
    level = {n: w for w, names in enumerate(waves(hard, order)) for n in names}
    assert all(level[a] == 1 + max((level[d] for d in deps), default=-1) for a, deps in hard.items())


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdefg"), st.lists(st.sampled_from("abcdefg"), max_size=3), min_size=1)
)
def test_any_graph_has_a_cycle_exactly_when_it_cannot_be_ordered(graph: dict[str, list[str]]) -> None:
    hard = {n: [d for d in deps if d in graph] for n, deps in graph.items()}
    cycles = find_cycles(hard)
    for cycle in cycles:
        assert cycle[0] == cycle[-1] == min(cycle)
        assert all(b in hard[a] for a, b in itertools.pairwise(cycle))
    try:
        topological_order(hard)
    except ValueError:
        assert cycles
    else:
        assert not cycles


# -- the locked plan ---------------------------------------------------------------------------------------


def test_the_plan_hash_depends_on_the_agents_not_on_how_they_are_written(tensoraios: Collection) -> None:
    plan = lock(tensoraios)
    assert lock(load_file(EXAMPLES / "tensoraios_ecosystem.md")).hash == plan.hash
    text = (EXAMPLES / "tensoraios_ecosystem.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    as_yaml = "# the same agents, as multi-document YAML\n" + "---\n".join(blocks)
    assert lock(load_collection(as_yaml, "tensoraios_ecosystem.yaml")).hash == plan.hash
    changed = text.replace("role: Routes tasks to TensorAIOS", "role: Routes tasks to the TensorAIOS")
    assert lock(load_collection(changed, "tensoraios_ecosystem.md")).hash != plan.hash
    assert plan.hash == LockedPlan.model_validate_json(plan.model_dump_json()).hash


def test_a_plan_changed_after_locking_is_refused(tensoraios: Collection) -> None:
    data = json.loads(lock(tensoraios).model_dump_json())
    data["items"][0]["path"] = "code/L9/core/tensoraios/evil.py"
    with pytest.raises(ValidationError, match="hash does not match the plan's content"):
        LockedPlan.model_validate(data)


def test_plan_items_of_an_agent(tensoraios: Collection) -> None:
    plan = lock(tensoraios)
    assert plan.counts() == {"file": 39, "doc": 15, "manifest": 5, "link": 2}
    assert [i.todo for i in plan.items] == list(range(1, len(plan.items) + 1))
    by_path = {item.path: item for item in plan.items}
    agent = by_path["code/L9/core/tensoraios/agent.py"]
    assert (agent.kind, agent.template, agent.module, agent.wave) == (
        "agent",
        "agent.py.j2",
        "L9.core.tensoraios.agent",
        0,
    )
    assert agent.inputs == ("name", "streams", "governance", "deployment", "cursorinstructions.linkexisting")
    assert agent.imports == (
        "agents",
        "envelope",
        "L9.core.tensoraios.payloads",
        "L9.core.tensoraios.config",
        "L9.core.tensoraios.governance_bridge",
        "L9.core.tensoraios.kernels",
        "agents.base",
    )
    assert by_path["tests/tensoraios/test_kernels.py"].imports == ("L9.core.tensoraios.kernels",)
    assert by_path["docs/main_agent/GOVERNANCE.md"].kind == "governance_doc"
    assert by_path["manifests/plastos_adapter_manifest.json"].wave == 2
    assert by_path["code/L9/agents/main/__main__.py"].imports == (
        "l9.start",
        "L9.agents.main.agent_controller",
    )


def test_links_to_planned_and_existing_modules(tensoraios: Collection) -> None:
    links = [i for i in lock(tensoraios).items if i.category == "link"]
    assert [(i.agent, i.path, i.module, i.link_to) for i in links] == [
        ("tensoraios", "agents/base.py", "agents.base", None),
        ("plastos_adapter", "L9/agents/main/payloads.py", "L9.agents.main.payloads", "main_agent"),
    ]


def test_unresolvable_entries_reject_a_strict_plan_and_are_listed_otherwise() -> None:
    collection = load_file(EXAMPLES / "broken" / "unresolvable_file.yaml")
    at = "unresolvable_file.yaml:{} agent '{}': cursorinstructions.{} entry '{}' is unresolvable: {}".format
    no_kind = "no naming convention gives it a kind and it declares none (see docs/SCHEMA.md)"
    assert rejected(collection) == [
        at(14, "tensoraios", "generatefiles", "tensor_scorer.py", no_kind),
        at(
            15,
            "tensoraios",
            "generatefiles",
            "kernels.py",
            "kind 'kernels' has nothing to render: the agent declares no expressions",
        ),
        at(
            17,
            "tensoraios",
            "generatefiles",
            "config.py",
            "'scoring/engine.py' is already the agent's 'settings' file",
        ),
        at(20, "tensoraios", "generatedocs", "PERFORMANCE_GUIDE.md", no_kind),
        at(
            21,
            "tensoraios",
            "generatedocs",
            "NOTES.md",
            "kind 'kernels_doc' has nothing to render: the agent declares no expressions",
        ),
        at(
            32,
            "main_agent",
            "linkexisting",
            "L9/core/tensoraios/tensor_scorer.py",
            "it is inside agent 'tensoraios', which does not plan L9.core.tensoraios.tensor_scorer",
        ),
        at(
            33,
            "main_agent",
            "linkexisting",
            "L9/core/tensoraios/agent.py",
            "it belongs to agent 'tensoraios', which is not a hard dependency (it may not exist yet)",
        ),
    ]
    plan = lock(collection, strict=False)
    assert [(u.agent, u.path) for u in plan.unresolved][:2] == [
        ("tensoraios", "tensor_scorer.py"),
        ("tensoraios", "kernels.py"),
    ]
    paths = {item.path for item in plan.items}
    assert (
        "code/L9/core/tensoraios/scoring/engine.py" in paths
        and "code/L9/core/tensoraios/config.py" not in paths
    )
    assert ("main_agent", "bus/keys.py", None) in {(i.agent, i.path, i.link_to) for i in plan.items}


def test_a_path_planned_by_two_agents_is_unresolvable_for_the_later_one() -> None:
    text = "\n".join(
        f"- {{system: {n}, module: m, name: {n}, role: r, rootpath: {root}, governance: {{anchors: [Igor]}},"
        f" cursorinstructions: {{generatefiles: [{files}]}}}}"
        for n, root, files in (
            ("outer", "L9/core", "inner/__init__.py"),
            ("inner", "L9/core/inner", "__init__.py"),
        )
    )
    assert rejected(load_collection(text + "\n", "c.yaml")) == [
        "c.yaml:1 agent 'outer': rootpath 'code/L9/core/inner/__init__.py' is unresolvable:"
        " agent 'inner' plans code/L9/core/inner/__init__.py too"
    ]


def test_the_plan_reads_as_a_todo_list(tensoraios: Collection) -> None:
    listing = text_listing(lock(tensoraios))
    assert listing.startswith("locked plan tensoraios_ecosystem (l9.plan/1, sha256 ")
    assert "wave 1: main_agent, tensor_trainer, tensor_auditor\n" in listing
    assert (
        "  #36 link L9/agents/main/payloads.py [link] -> main_agent imports L9.agents.main.payloads\n"
        in listing
    )


# -- kinds -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("__init__.py", "package"),
        ("core/__init__.py", "package"),
        ("agent_controller.py", "agent"),
        ("test_agent_controller.py", "agent_tests"),
        ("test_kernels.py", "kernel_tests"),
        ("API_SPEC.md", "api"),
        ("tensoraios_manifest.json", "manifest"),
        ("tensor_scorer.py", None),
        ("readme.md", None),
    ],
)
def test_the_naming_convention(path: str, kind: str | None) -> None:
    assert kind_by_convention(path) == kind


def test_the_published_reference_lists_every_kind_and_convention() -> None:
    assert set(KINDS) == set(get_args(Kind))
    reference = (ROOT / "docs" / "SCHEMA.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in reference.splitlines() if line.startswith("| `")}
    for kind, spec in KINDS.items():
        assert kind in rows, f"kind {kind} is not in docs/SCHEMA.md"
        assert ", ".join(spec.inputs) in rows[kind], f"inputs of {kind} differ from docs/SCHEMA.md"
    for pattern, kind in CONVENTIONS:
        assert f"`{pattern}`" in rows[kind], f"{pattern} -> {kind} is not in docs/SCHEMA.md"
