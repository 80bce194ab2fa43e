"""Conditions and computed values of rules: compiled callables that agree with SymPy's own
evaluation of the safely parsed text, printed code that is the same in every process, and
every refusal named with its place."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sympy
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agents.rules.conditions import Condition, compile_condition, compile_value
from agents.rules.errors import RuleError
from agents.sympy.parser import parse

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("a", "b", "c")


# -- examples -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "names", "source", "cases"),
    [
        ("risk > 0.8", ["risk"], "(risk > 0.8)", [({"risk": 0.81}, True), ({"risk": 0.8}, False)]),
        (
            "a >= b and c < 3",
            ["a", "b", "c"],
            "(a >= b) and (c < 3)",
            [
                ({"a": 2, "b": 2, "c": 2.9}, True),
                ({"a": 1, "b": 2, "c": 0}, False),
                ({"a": 3, "b": 2, "c": 3}, False),
            ],
        ),
        (
            "Abs(x - y) <= 1e-3",
            ["x", "y"],
            "(abs(x - y) <= 0.001)",
            [({"x": 1.0, "y": 1.0009}, True), ({"x": 1.0, "y": 0.998}, False)],
        ),
        (
            "count >= 5 or late",
            ["count", "late"],
            "(count >= 5) or (late != 0)",
            [
                ({"count": 5, "late": False}, True),
                ({"count": 4, "late": True}, True),
                ({"count": 4, "late": 0}, False),
            ],
        ),
        (
            "not (x > 1 or y > 1)",
            ["x", "y"],
            "not ((x > 1) or (y > 1))",
            [({"x": 0, "y": 1}, True), ({"x": 2, "y": 0}, False)],
        ),
        (
            "x*2 > exp(y)",
            ["x", "y"],
            "(2*x > math.exp(y))",
            [({"x": 1.0, "y": 0.0}, True), ({"x": 1.0, "y": 1.0}, False)],
        ),
    ],
)
def test_the_documented_forms_compile_to_the_expected_code(
    text: str, names: list[str], source: str, cases: list[tuple[dict[str, float], bool]]
) -> None:
    condition = compile_condition(text, names)
    assert condition.source == source
    assert set(condition.names) <= set(names)
    for values, holds in cases:
        assert condition(values) is holds, values


def test_the_text_order_is_kept_so_a_guard_protects_what_follows() -> None:
    guarded = compile_condition("x > 0 and log(x) > 1", ["x"])
    assert guarded.source == "(x > 0) and (math.log(x) > 1)"
    assert guarded({"x": -1.0}) is False  # log(-1) is never evaluated
    assert guarded({"x": 3.0}) is True
    unguarded = compile_condition("log(x) > 1 and x > 0", ["x"], where="rules.alert.when")
    with pytest.raises(
        RuleError,
        match=r"^rules.alert.when: 'log\(x\) > 1 and x > 0' cannot be evaluated at x=-1.0: math domain",
    ):
        unguarded({"x": -1.0})


def test_a_value_chains_into_a_condition() -> None:
    score = compile_value("1/(1 + exp(-(w1*x + w2*y**2)))", ["w1", "w2", "x", "y"], where="kernels.score")
    assert score.names == ("w1", "w2", "x", "y")
    assert score.source == "1/(math.exp(-w1*x - w2*y**2) + 1)"
    values = {"w1": 0.5, "w2": -1.5, "x": 2.0, "y": 0.5}
    got = score(values)
    assert got == pytest.approx(1 / (1 + math.exp(-(0.5 * 2.0 - 1.5 * 0.25))), rel=1e-15)
    alert = compile_condition("score > 0.6 and x >= 1", ["score", "x"])
    assert alert({"score": got, "x": 2.0}) is True


def test_the_printed_code_pasted_into_a_module_computes_what_the_callable_does(tmp_path: Path) -> None:
    texts = {
        "when": ("Abs(a - b) <= 0.5 or not (c > 2 and Max(a, b, c) < 10)", ["a", "b", "c"]),
        "guard": ("a > 0 and sqrt(a) + atan2(b, a) > c", ["a", "b", "c"]),
    }
    compiled = {name: compile_condition(text, names) for name, (text, names) in texts.items()}
    value = compile_value("floor(a) + sign(b)*cos(c)**2 - Min(a, 2)/3", ["a", "b", "c"])
    lines = ["import math", ""]
    for name, cond in compiled.items():
        lines += [f"def {name}({', '.join(cond.names)}):", f"    return {cond.source}", ""]
    lines += [f"def value({', '.join(value.names)}):", f"    return {value.source}", ""]
    module_file = tmp_path / "generated_rules.py"
    module_file.write_text("\n".join(lines))
    spec = importlib.util.spec_from_file_location("generated_rules", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grid = [-3.0, -0.5, 0.0, 0.25, 1.0, 2.5, 9.0]
    for a in grid:
        for b in grid:
            for c in grid:
                values = {"a": a, "b": b, "c": c}
                for name, cond in compiled.items():
                    assert bool(getattr(module, name)(**values)) is cond(values), (name, values)
                assert module.value(**values) == value(values)


def test_the_printed_code_is_the_same_in_every_process() -> None:
    texts = [
        "z*y + x > 2.5e-3 and (Abs(x) < Max(y, z) or not flag)",
        "sin(a)**2 + cos(b) >= 1/3 or Eq(a + b + c, 0)",
        "exp(c) - log(b) + 0.1*a",
    ]
    script = (
        "import json, sys\n"
        "from agents.rules.conditions import compile_condition, compile_value\n"
        "texts = json.loads(sys.argv[1])\n"
        "out = [compile_condition(t, ['x', 'y', 'z', 'flag', 'a', 'b', 'c']).source for t in texts[:2]]\n"
        "out.append(compile_value(texts[2], ['a', 'b', 'c']).source)\n"
        "print(json.dumps(out))\n"
    )
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", script, json.dumps(texts)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    here = [compile_condition(t, ["x", "y", "z", "flag", "a", "b", "c"]).source for t in texts[:2]]
    here.append(compile_value(texts[2], ["a", "b", "c"]).source)
    assert runs[0] == runs[1] == here


# -- agreement with SymPy on random floats ----------------------------------------------------------
# Deep trees take quarter-integers of [-4, 4]: every sum, difference, product, square, Abs, Min
# and Max of up to five of them is exact in a double, so float and exact arithmetic agree
# and only the functions (sin, atan: within an ulp) round. Shallow relations take any finite
# float (test_..._wide_floats). Relations closer to their boundary than 1e-9 (relative) are
# skipped: a rounding may tip them.
@dataclass(frozen=True)
class Tree:
    """A condition as the test builds it: its text, and how to evaluate it with SymPy."""

    text: str
    op: str  # "leaf", "flag", "and", "or", "not"
    parts: tuple[Tree, ...] = ()


quarters = st.integers(-16, 16).map(lambda k: k / 4)
atom = st.one_of(st.sampled_from(NAMES), quarters.map(repr))
atoms = st.one_of(
    atom,
    atom.map(lambda e: f"({e})**2"),
    atom.map(lambda e: f"sin({e})"),
    atom.map(lambda e: f"atan({e})"),
)


def _arith(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    two = st.tuples(children, children)
    return st.one_of(
        two.map(lambda p: f"({p[0]} + {p[1]})"),
        two.map(lambda p: f"({p[0]} - {p[1]})"),
        two.map(lambda p: f"({p[0]} * {p[1]})"),
        two.map(lambda p: f"Max({p[0]}, {p[1]})"),
        two.map(lambda p: f"Min({p[0]}, {p[1]})"),
        children.map(lambda e: f"Abs({e})"),
    )


arithmetic = st.recursive(atoms, _arith, max_leaves=5)
OPERATORS = st.sampled_from(["<", "<=", ">", ">=", "==", "!="])
relations = st.tuples(arithmetic, OPERATORS, arithmetic).map(lambda r: Tree(f"{r[0]} {r[1]} {r[2]}", "leaf"))
flags = st.sampled_from(NAMES).map(lambda n: Tree(n, "flag"))


def _combine(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    pairs = st.lists(children, min_size=2, max_size=3)
    return st.one_of(
        pairs.map(lambda ps: Tree(" and ".join(f"({p.text})" for p in ps), "and", tuple(ps))),
        pairs.map(lambda ps: Tree(" or ".join(f"({p.text})" for p in ps), "or", tuple(ps))),
        children.map(lambda p: Tree(f"not ({p.text})", "not", (p,))),
    )


conditions = st.recursive(st.one_of(relations, flags), _combine, max_leaves=5)
points = st.fixed_dictionaries({name: quarters for name in NAMES})
wide = st.floats(allow_nan=False, allow_infinity=False)
wide_points = st.fixed_dictionaries(
    {name: st.one_of(wide, st.sampled_from([0.0, 1.0, -1.0])) for name in NAMES}
)
SHALLOW = [
    "a > b", "a*b <= c", "a + b == c", "a - b != c", "Abs(a - b) <= c", "sin(a) < b", "atan(a) >= b*c",
    "Max(a, b) > c", "Min(a, b, c) < 0", "sqrt(Abs(a)) > b", "a/2 + b/4 >= c",
]  # fmt: skip


def _exact(values: dict[str, float]) -> dict[Any, Any]:
    return {sympy.Symbol(name): sympy.Rational(value) for name, value in values.items()}


def sympy_holds(tree: Tree, values: dict[str, float]) -> bool:
    """The tree's truth by SymPy: each relation as the safe parser reads it, evaluated exactly
    (rational inputs, 50 digits), skipped when too near its boundary."""
    if tree.op == "flag":
        return values[tree.text] != 0
    if tree.op == "not":
        return not sympy_holds(tree.parts[0], values)
    if tree.op in ("and", "or"):
        results = [sympy_holds(p, values) for p in tree.parts]
        return all(results) if tree.op == "and" else any(results)
    parsed = parse(tree.text)
    if isinstance(parsed, sympy.logic.boolalg.BooleanAtom):
        return bool(parsed)
    lhs, rhs = (side.subs(_exact(values)).evalf(50) for side in (parsed.lhs, parsed.rhs))
    assume(abs(lhs - rhs) > 1e-9 * (1 + abs(lhs) + abs(rhs)))
    return bool(type(parsed)(lhs, rhs))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(tree=conditions, point=points)
def test_a_compiled_condition_agrees_with_sympy_on_random_floats(tree: Tree, point: dict[str, float]) -> None:
    condition = compile_condition(tree.text, NAMES)
    expected = sympy_holds(tree, point)
    assert condition(point) is expected
    # and with SymPy's reading of the whole condition, the one the compiled code was printed from
    real = {sympy.Symbol(n, real=True): sympy.Rational(v) for n, v in point.items()}
    assert bool(condition.expr.subs(real)) is expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(text=st.sampled_from(SHALLOW), point=wide_points)
def test_a_compiled_relation_agrees_with_sympy_on_wide_floats(text: str, point: dict[str, float]) -> None:
    assert compile_condition(text, NAMES)(point) is sympy_holds(Tree(text, "leaf"), point)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=arithmetic, point=points)
def test_a_compiled_value_agrees_with_sympy_on_random_floats(text: str, point: dict[str, float]) -> None:
    value = compile_value(text, NAMES)
    exact = parse(text).subs(_exact(point)).evalf(50)
    assert value(point) == pytest.approx(float(exact), rel=1e-9, abs=1e-9)


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('id') > 0", r"^when:1:1: forbidden_name: __import__ is not allowed$"),
        ("risk > 0.8 and x.__class__ > 1", r"^when:1:18: forbidden_name: __class__ is not allowed$"),
        (
            "risk > 0.8 or risk.real > 1",
            r"^when:1:15: forbidden_attribute: attribute access .real is not allowed$",
        ),
        (
            "risk > 0 and (lambda: 1)() > 0",
            r"^when:1:15: forbidden_syntax: Lambda is not allowed in an expression$",
        ),
        ("risk > 'a'", r"^when:1:8: forbidden_literal: literal str is not allowed$"),
        ("eval(risk) > 0", r"^when:1:1: forbidden_name: eval is not allowed$"),
        (
            "risk > 0.8 and foo < bar",
            r"^when:1:16: unknown name\(s\) foo at 1:16, bar at 1:22 \(known: risk\)$",
        ),
        ("(risk > 1 and\n   nope > 2)", r"^when:2:4: unknown name\(s\) nope at 2:4 \(known: risk\)$"),
        ("risk + 1", r"^when:1:1: 'risk \+ 1' is a number, not a condition: compare it \(risk \+ 1 > 0\)$"),
        ("risk >", r"^when:1:7: syntax: invalid syntax$"),
        ("a < risk < b", r"^when:1:1: forbidden_syntax: chained comparisons are not allowed$"),
        ("arg(risk) > 1", r"^when:1:1: arg has no Python \(math module\) form$"),
        ("risk > 1/0", r"^when:1:1: invalid_operation: TypeError: Invalid comparison of non-real zoo$"),
        ("x" * 2001, r"^when:1:2001: max_length: input longer than 2000 characters$"),
    ],
)
def test_a_condition_it_cannot_take_is_named_with_its_place(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message) as caught:
        compile_condition(text, ["risk"], where="when")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["pi"], r"'pi' cannot name a value: a constant of the expression grammar"),
        (["exp"], r"'exp' cannot name a value: a function of the expression grammar"),
        (["math"], r"'math' cannot name a value: used by the generated code"),
        (["min"], r"'min' cannot name a value: used by the generated code"),
        (["lambda"], r"'lambda' cannot name a value: a Python keyword"),
        (["_x"], r"'_x' cannot name a value: want a letter"),
        (["open"], r"'open' cannot name a value: refused by the safe parser"),
        ("risk", r"names must be a list of names, not the text 'risk'"),
    ],
)
def test_names_a_value_cannot_have_are_refused(names: Any, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        compile_condition("risk > 0", names)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x > 1", r"^value: 'x > 1' is a condition, not a value$"),
        ("sqrt(-1)*x", r"^value: 'sqrt\(-1\)\*x' is complex$"),
        ("x + 1/0", r"^value: 'x \+ 1/0' is undefined \(a division by zero\?\)$"),
        ("x + oo", r"^value: 'x \+ oo' is infinite$"),
        ("x + y", r"^value:1:5: unknown name\(s\) y at 1:5 \(known: x\)$"),
    ],
)
def test_a_value_it_cannot_take_is_refused(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        compile_value(text, ["x"])


def test_values_it_cannot_use_are_refused_at_run_time() -> None:
    condition: Condition = compile_condition("x > y", ["x", "y"], where="rules.r.when")
    value = compile_value("exp(x)", ["x"], where="rules.r.score")
    cases: list[tuple[Any, dict[str, Any], str]] = [
        (condition, {"x": 1.0}, r"^rules.r.when: no value for 'y'$"),
        (condition, {"x": math.nan, "y": 1.0}, r"^rules.r.when: x is nan: values must be finite numbers$"),
        (condition, {"x": "1", "y": 1.0}, r"^rules.r.when: x is str '1', not a number$"),
        (condition, {"x": 10**400, "y": 1.0}, r"^rules.r.when: x is an integer too large for a float$"),
        (
            value,
            {"x": 1000.0},
            r"^rules.r.score: 'exp\(x\)' cannot be evaluated at x=1000.0: math range error$",
        ),
    ]
    for compiled, point, message in cases:
        with pytest.raises(RuleError, match=message):
            compiled(point)
    assert value({"x": 0}) == 1.0
