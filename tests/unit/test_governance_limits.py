"""Rules ``size_bounds``, ``expression_length`` and ``expression_functions`` (SymPy limits)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance import Artifact, ArtifactSet, PolicyEngine, Request
from governance._limits import power_profile
from governance._rules import build_rule

SIZE = build_rule("size_bounds", {"max_file_bytes": 100, "max_lines": 5, "max_files_per_agent": 3})
LENGTH = build_rule("expression_length", {"max_chars": 50})
FUNCS = build_rule("expression_functions", {})


def sympy(**data: object) -> Request:
    return Request(type="l9.sympy.evaluate.v1", data=data, requester="agent://planner/p-0")


def test_file_size_and_line_bounds() -> None:
    assert SIZE.artifact(Artifact("a.py", "x = 1\n" * 5)) == []
    (big,) = SIZE.artifact(Artifact("a.py", b"\x00" * 101))
    assert big.file == "a.py" and "101 bytes, over the bound of 100" in big.what
    found = SIZE.artifact(Artifact("a.py", "x\n" * 6))
    assert [f.what for f in found] == ["6 lines, over the bound of 5"]


def test_size_counts_utf8_bytes_not_characters() -> None:
    assert SIZE.artifact(Artifact("a.md", "é" * 50)) == []  # 100 bytes
    assert len(SIZE.artifact(Artifact("a.md", "é" * 51))) == 1


def test_files_per_agent_are_counted_per_agent() -> None:
    files = [Artifact(f"g/{i}.py", "x = 1\n", agent="generator") for i in range(4)]
    files += [Artifact(f"p/{i}.py", "x = 1\n", agent="planner") for i in range(3)]
    (finding,) = SIZE.artifact_set(ArtifactSet(files))
    assert finding.what == "agent 'generator' produced 4 files, over the bound of 3"


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"expression": "x" * 51}, "expression"),
        ({"expressions": ["x+1", "y" * 60]}, "expressions[1]"),
        ({"formulas": {"score": "z" * 51}}, "formulas.score"),
    ],
)
def test_expression_length_finds_each_long_expression(data: dict[str, object], where: str) -> None:
    (finding,) = LENGTH.request(sympy(**data))
    assert finding.what.startswith(f"{where}: ")
    assert "over max_expression_length 50" in finding.what


def test_expression_length_allows_short_ones_and_ignores_other_fields() -> None:
    assert LENGTH.request(sympy(expression="x" * 50, note="n" * 500)) == []


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("__import__('os').system('ls')", "dangerous function or name __import__, os"),
        ("eval('1')", "dangerous function or name eval"),
        ("lambdify(x, x**2)", "dangerous function or name lambdify"),
        ("x.__class__", "dunder name __class__"),
        ("factorial(" + "9" * 120 + ")", "numeric literal of 120 digits"),
        ("9**9**9**9", "power tower of 4 levels"),
        ("2**(3**(4**5))", "power tower of 4 levels"),
        ("x**100000000", "literal exponent of 100000000"),
        ("x^123456789", "literal exponent of 123456789"),
    ],
)
def test_dangerous_expressions_are_found(expression: str, problem: str) -> None:
    found = FUNCS.request(sympy(expression=expression))
    assert any(problem in f.what for f in found), found


@pytest.mark.parametrize(
    "expression",
    [
        "1/(1+exp(-(w1*x + w2*y**2)))",
        "sin(x)**2 + cos(x)**2",
        "diff(x**3, x) + integrate(exp(-x**2), (x, -oo, oo))",
        "(x+1)**2**3",
        "1e10 * x + 3.14159",
        "Matrix([[1, 2], [3, 4]]).det()",
    ],
)
def test_ordinary_expressions_pass(expression: str) -> None:
    assert FUNCS.request(sympy(expression=expression)) == []


def test_power_profile() -> None:
    assert power_profile("x + y") == (0, 0)
    assert power_profile("x**2 + y**3") == (1, 3)
    assert power_profile("9**9**9") == (2, 9)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=4, max_value=12))  # the default allows 3 levels
def test_any_tower_above_the_limit_is_found(levels: int) -> None:
    tower = "**".join(["2"] * levels)
    assert any("power tower" in f.what for f in FUNCS.request(sympy(expression=tower)))


def test_default_policy_escalates_sympy_limits_to_igor() -> None:
    engine = PolicyEngine.load()
    long = engine.evaluate(sympy(expression="x+" * 1500 + "x"))
    assert long.escalated and long.anchors == ("Igor",)
    assert long.policy == "sympy-expression-length@1"
    bad = engine.evaluate(sympy(expression="__import__('os')"))
    assert bad.escalated and bad.policy == "sympy-dangerous-functions@1"
    ok = engine.evaluate(sympy(expression="sin(x)**2"))
    assert ok.allowed and set(ok.policies) == {"sympy-expression-length@1", "sympy-dangerous-functions@1"}
