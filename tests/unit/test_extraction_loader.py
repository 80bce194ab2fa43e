"""The schema collection loader: three formats, and every error with its file, line, agent and field."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from agents.extraction import AgentSchema, SchemaError, SchemaErrors, load_collection, load_file
from agents.extraction.loader import detect_format

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

AGENT = """\
system: Ingest
module: pipeline
name: {name}
role: Reads raw records
rootpath: L9/pipeline/{name}
governance: {{anchors: [Igor]}}
cursorinstructions: {{generatefiles: [__init__.py]}}
"""


def errors_of(text: str, origin: str = "c.yaml") -> list[str]:
    with pytest.raises(SchemaErrors) as caught:
        load_collection(dedent(text), origin)
    return [str(e) for e in caught.value.errors]


def broken(name: str) -> list[str]:
    with pytest.raises(SchemaErrors) as caught:
        load_file(EXAMPLES / "broken" / name)
    return [str(e) for e in caught.value.errors]


# -- formats ---------------------------------------------------------------------------------------------


def test_multi_document_yaml_a_yaml_list_and_markdown_give_the_same_agents() -> None:
    a, b = AGENT.format(name="alpha"), AGENT.format(name="beta")
    documents = load_collection(f"{a}---\n{b}", "c.yaml")
    listed = load_collection("".join("- " + line.replace("\n", "\n  ") + "\n" for line in (a, b)), "c.yaml")
    markdown = load_collection(
        f"# Two\n\nprose\n\n```yaml\n{a}```\n\n```python\nx = 1\n```\n\n```yml\n{b}```\n", "c.md"
    )
    assert documents.names() == listed.names() == markdown.names() == ["alpha", "beta"]
    assert documents.agents == listed.agents == markdown.agents
    assert (documents.format, markdown.format) == ("yaml", "markdown")


def test_lines_of_a_markdown_block_are_lines_of_the_file() -> None:
    text = f"# Title\n\n```yaml\n{AGENT.format(name='alpha')}```\n"
    collection = load_collection(text, "c.md")
    assert collection.line_of("alpha") == 4
    assert collection.line_of("alpha", ("rootpath",)) == 8
    assert collection.line_of("alpha", ("governance", "anchors", 0)) == 9


def test_format_follows_the_suffix_and_else_the_fences() -> None:
    assert detect_format("```yaml\na: 1\n```\n", "x.yaml") == "yaml"
    assert detect_format("a: 1\n", "x.md") == "markdown"
    assert detect_format("text\n```yaml\na: 1\n```\n", "-") == "markdown"
    assert detect_format("a: 1\n", "-") == "yaml"


def test_a_collection_knows_its_name_hash_and_agents() -> None:
    collection = load_file(EXAMPLES / "tensoraios_ecosystem.md")
    assert collection.name == "tensoraios_ecosystem" and collection.file == "tensoraios_ecosystem.md"
    assert len(collection.content_hash) == 64
    assert collection.names() == [
        "tensoraios",
        "main_agent",
        "plastos_adapter",
        "tensor_trainer",
        "tensor_auditor",
    ]
    assert all(a.streams.consumes and a.streams.produces for a in collection)
    assert sum(len(a.expressions) for a in collection) >= 3
    assert collection.agent("tensoraios").expressions["tensor_score"] == "1/(1+exp(-(w1*x + w2*y**2)))"
    assert collection.agent("tensoraios").package == "L9.core.tensoraios"


def test_the_symbolic_computation_service_loads() -> None:
    collection = load_file(EXAMPLES / "symbolic_computation_service.yaml")
    (service,) = collection.agents
    assert isinstance(service, AgentSchema) and service.name == "symbolic_computation"
    assert set(service.expressions) == {"gaussian", "rosenbrock", "cse_demo"}
    assert service.memorytopology.workingmemory is not None
    assert service.memorytopology.workingmemory.settings == {"cache_prefix": "sympy", "cache_ttl_s": 3600}


# -- malformed input -------------------------------------------------------------------------------------


def test_malformed_yaml_in_every_block_is_reported_at_its_file_line() -> None:
    assert broken("malformed.md") == [
        "malformed.md:20: malformed YAML: mapping values are not allowed here",
        "malformed.md:30: malformed YAML: expected ',' or ']', but got '}' (while parsing a flow sequence)",
    ]


def test_malformed_yaml_names_where_the_unclosed_part_started() -> None:
    text = "name: a\nroles: [x,\n  y\nother: 1\n"
    assert errors_of(text) == [
        "c.yaml:4: malformed YAML: expected ',' or ']', but got ':'"
        " (while parsing a flow sequence started at line 2)"
    ]


def test_an_unclosed_fence_and_a_markdown_file_without_yaml() -> None:
    assert errors_of("# x\n\n```yaml\nname: a\n", "c.md") == ["c.md:3: the ```yaml block is never closed"]
    assert errors_of("# only prose\n", "c.md") == ["c.md:1: the Markdown file has no ```yaml block"]


def test_an_empty_collection_and_documents_that_are_not_agents() -> None:
    assert errors_of("# nothing\n") == ["c.yaml:1: the collection declares no agent"]
    text = AGENT.format(name="alpha") + "---\n42\n---\n- [1, 2]\n"
    assert errors_of(text) == [
        "c.yaml:9: expected an agent (a mapping) or a list of agents, not the scalar '42'",
        "c.yaml:11: expected an agent (a mapping) or a list of agents, not a list",
    ]


def test_python_tags_are_refused_not_constructed() -> None:
    text = AGENT.format(name="alpha") + "deployment: !!python/object/apply:os.system ['true']\n"
    (error,) = errors_of(text)
    assert error.startswith("c.yaml:8 agent 'alpha': malformed YAML: could not determine a constructor")


def test_aliases_that_explode_or_contain_themselves_are_refused() -> None:
    levels = [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8)]
    laughs = "\n".join(["integration:", "  l0: &l0 [x]", *levels])  # 9**7 lists of "x"
    assert errors_of(AGENT.format(name="alpha") + laughs + "\n") == [
        "c.yaml:1 agent 'alpha': expands to more than 20000 YAML nodes"
        " (aliases repeating or containing themselves)"
    ]
    looped = AGENT.format(name="beta") + "deployment: &d {endpoints: [*d]}\n"
    assert errors_of(looped)[0].startswith("c.yaml:1 agent 'beta': expands to more than")


# -- one agent -------------------------------------------------------------------------------------------

INVALID = """\
system: Scorer
module: core
name: Scorer
role: Scores
rootpath: L9/core/my-scorer
depend_on: {hard: [x]}
governance:
  anchors: [Igor, Igor]
memorytopology:
  workingmemory: {storagetype: memcached}
cursorinstructions:
  generatefiles:
    - agent.py
    - {path: notes.py, kind: readme}
    - {path: ../escape.py}
streams:
  consumes: [l9.scores.v1]
expressions:
  score: "1/(1+exp(-x"
  Bad: x
"""


def test_every_field_error_of_an_agent_is_reported_at_once_with_its_line() -> None:
    at = "c.yaml:{} agent 'Scorer': {}".format
    assert errors_of(INVALID) == [
        at(3, "name: must be a lowercase identifier like 'main_agent' (got 'Scorer')"),
        at(
            5,
            "rootpath: 'L9/core/my-scorer' must be a relative path of Python identifiers"
            " (e.g. L9/core/tensoraios), so that the generated package imports",
        ),
        at(6, "depend_on: is not a field of the schema (did you mean 'depends_on'?)"),
        at(8, "governance.anchors lists 'Igor' twice"),
        at(
            10,
            "memorytopology.workingmemory.storagetype: Input should be 'redis',"
            " 'redis_cluster', 'postgres', 'neo4j', 'falkordb' or 'hypergraphdb'",
        ),
        at(14, "cursorinstructions.generatefiles.1: kind 'readme' renders a .md file, not 'notes.py'"),
        at(
            15,
            "cursorinstructions.generatefiles.2.path: '../escape.py' is not a relative path"
            " of plain names (no '..', no leading '/')",
        ),
        at(17, "streams.consumes.0: 'l9.scores.v1' is not an envelope type l9.<area>.<name>.v<N>"),
        at(19, "expressions.score: is not a formula: '(' was never closed (column 9)"),
        at(20, "expressions.Bad: must be a lowercase identifier like 'main_agent' (got 'Bad')"),
    ]


def test_missing_fields_point_at_the_agent_and_nameless_agents_by_position() -> None:
    text = AGENT.format(name="alpha") + "---\nsystem: Nameless\nmodule: core\n"
    assert errors_of(text) == [
        "c.yaml:9 agent #2: cursorinstructions: is required",
        "c.yaml:9 agent #2: governance: is required",
        "c.yaml:9 agent #2: name: is required",
        "c.yaml:9 agent #2: role: is required",
        "c.yaml:9 agent #2: rootpath: is required",
    ]


def test_a_repeated_list_entry_is_reported_at_the_repeat() -> None:
    text = AGENT.format(name="alpha").replace("[__init__.py]", "[__init__.py, agent.py, __init__.py]")
    assert errors_of(text) == [
        "c.yaml:7 agent 'alpha': cursorinstructions.generatefiles lists '__init__.py' twice"
    ]


# -- across agents ---------------------------------------------------------------------------------------


def test_an_unknown_dependency_names_file_line_agent_and_field() -> None:
    assert broken("unknown_dependency.md") == [
        "unknown_dependency.md:24 agent 'plastos_adapter': depends_on.hard names unknown agent 'main'"
        " (did you mean 'main_agent'?)",
        "unknown_dependency.md:24 agent 'plastos_adapter': depends_on.hard names unknown agent 'tensoraios'",
    ]


def test_a_duplicate_agent_and_a_key_written_twice() -> None:
    assert broken("duplicate_agent.yaml") == [
        "duplicate_agent.yaml:12 agent 'scorer': name 'scorer' is declared twice (first at line 4)",
        "duplicate_agent.yaml:16 agent 'scorer': governance is written twice (first at line 15)",
    ]


def test_an_invalid_agent_is_still_checked_across_agents() -> None:
    text = (
        AGENT.format(name="alpha")
        + "---\n"
        + AGENT.format(name="beta").replace("role: Reads raw records\n", "")
    )
    text += "depends_on: {hard: [gamma]}\n"
    assert errors_of(text) == [
        "c.yaml:9 agent 'beta': role: is required",
        "c.yaml:15 agent 'beta': depends_on.hard names unknown agent 'gamma'",
    ]


def test_two_agents_with_one_rootpath() -> None:
    text = (
        AGENT.format(name="alpha")
        + "---\n"
        + AGENT.format(name="beta").replace("pipeline/beta", "pipeline/alpha")
    )
    assert errors_of(text) == [
        "c.yaml:13 agent 'beta': rootpath 'L9/pipeline/alpha' is also the rootpath of agent 'alpha'"
    ]


def test_schema_errors_read_as_a_sorted_list() -> None:
    late = SchemaError("b.md", 3, "invalid", "x: broken", agent="a")
    early = SchemaError("b.md", 1, "yaml", "malformed YAML: y")
    errors = SchemaErrors([late, early])
    assert errors.errors == [early, late]
    assert (
        str(errors)
        == "2 errors in the schema collection:\n  b.md:1: malformed YAML: y\n  b.md:3 agent 'a': x: broken"
    )
    assert [e.code for e in errors.errors] == ["yaml", "invalid"]
