"""The operations in-process: symbolic answers, cache-key canonical forms, backend agreement."""

from __future__ import annotations

from typing import Any

import mpmath
import pytest
import sympy

from agents.contracts.sympy.errors import ParseRejected, ToolError
from agents.contracts.sympy.payloads import (
    Cse,
    Diff,
    Evaluate,
    Expand,
    Factor,
    Integrate,
    Series,
    Simplify,
    Solve,
    SymPyRequest,
)
from agents.sympy.operations import Job, ToolConfig, execute
from agents.sympy.parser import ParserLimits, parse

LIMITS = ToolConfig()


def run(request: SymPyRequest, limits: ToolConfig = LIMITS) -> dict[str, Any]:
    return execute(limits, Job("run", request))


def key(request: SymPyRequest) -> str:
    return str(execute(LIMITS, Job("key", request))["key"])


def same(text: str, expected: str) -> bool:
    return bool(sympy.simplify(parse(text) - parse(expected)) == 0)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (Simplify(expr="sin(x)**2 + cos(x)**2"), "1"),
        (Expand(expr="(x + 1)**3"), "x**3 + 3*x**2 + 3*x + 1"),
        (Factor(expr="x**2 - 1"), "(x - 1)*(x + 1)"),
        (Diff(expr="x**3 * y", wrt="x", order=2), "6*x*y"),
        (Diff(expr="sin(t)"), "cos(t)"),
        (Integrate(expr="x**2", lower="0", upper="3"), "9"),
        (Integrate(expr="exp(2*x)"), "exp(2*x)/2"),
        (Series(expr="exp(x)", order=4, remove_order=True), "1 + x + x**2/2 + x**3/6"),
        (Series(expr="1/x", at="1", order=3, remove_order=True), "3 - 3*x + x**2"),
    ],
)
def test_symbolic_operations_answer_correctly(request_: SymPyRequest, expected: str) -> None:
    result = run(request_)
    assert result["expr"] == sympy.sstr(parse(expected)) or same(result["expr"], expected)
    assert result["ops"] == sympy.count_ops(parse(result["expr"]))


def test_series_keeps_its_order_term_unless_asked() -> None:
    assert run(Series(expr="sin(x)", order=4))["expr"] == "x - x**3/6 + O(x**4)"


def test_solve_returns_every_solution_by_unknown() -> None:
    assert run(Solve(equations=["x**2 == 4"]))["solutions"] == [{"x": "-2"}, {"x": "2"}]
    system = run(Solve(equations=["x + y == 3", "Eq(x - y, 1)"], unknowns=["x", "y"]))
    assert system["solutions"] == [{"x": "2", "y": "1"}]


def test_cse_counts_operations_before_and_after() -> None:
    result = run(Cse(exprs=["sin(x)**2 + sin(x)", "cos(sin(x))"]))
    assert result["replacements"] == [("x0", "sin(x)")]
    assert result["reduced"] == ["x0**2 + x0", "cos(x0)"]
    assert (result["ops_before"], result["ops_after"]) == (6, 4)
    det = run(
        Cse(exprs=["det(Matrix([[a, b, c], [d, e, f], [g, h, i]])) * exp(det(Matrix([[a, b], [d, e]])))"])
    )
    assert det["ops_after"] < det["ops_before"]


def test_keys_agree_on_canonical_forms_and_differ_on_parameters() -> None:
    assert key(Simplify(expr="x+y")) == key(Simplify(expr="y + x"))
    assert key(Simplify(expr="2*x*y")) == key(Simplify(expr="y*(x*2)"))
    assert key(Simplify(expr="x-y")) != key(Simplify(expr="y-x"))
    assert key(Diff(expr="x*y", wrt="x")) != key(Diff(expr="x*y", wrt="y"))
    assert key(Evaluate(expr="x+1", points={"x": [1]})) != key(Evaluate(expr="x+1", points={"x": [2]}))
    assert key(Integrate(expr="x", lower="a", upper="b")) != key(Integrate(expr="x", lower="b", upper="a"))
    hashes = {execute(LIMITS, Job("key", Simplify(expr=t)))["expr_hash"] for t in ("x+y", "y+x")}
    assert len(hashes) == 1


def test_a_rejection_names_the_field_it_came_from() -> None:
    with pytest.raises(ParseRejected) as caught:
        run(Solve(equations=["x == 1", "y == __import__('os')"]))
    assert caught.value.rule == "forbidden_name" and caught.value.detail.startswith("equations[1]: ")
    assert caught.value.position.offset == 5


def test_requests_that_make_no_sense_are_invalid() -> None:
    cases: list[tuple[SymPyRequest, str]] = [
        (Diff(expr="x*y"), "ambiguous_variable"),
        (Integrate(expr="x", lower="0"), "bounds"),
        (Evaluate(expr="x + y", points={"x": [1.0]}), "missing_values"),
        (Evaluate(expr="x + y", points={"x": [1.0], "y": [1.0, 2.0]}), "points_shape"),
        (Evaluate(expr="x == 1", points={"x": [1.0]}), "not_numeric"),
    ]
    for request, rule in cases:
        with pytest.raises(ToolError) as caught:
            run(request)
        assert (caught.value.kind, caught.value.rule) == ("invalid", rule), request
    limits = ToolConfig(ParserLimits(), max_points=3)
    with pytest.raises(ToolError, match="4 points exceed 3"):
        run(Evaluate(expr="x", points={"x": [1.0, 2.0, 3.0, 4.0]}), limits)


# -- evaluation backends -------------------------------------------------------------------
AGREEMENT = {
    "polynomial": "3*x**4 - 2*x**3 + x*y + 7",
    "trig_exp": "exp(-x**2/2)*cos(3*x) + sin(y)**2 + 2",
    "rational": "(x**3 + 2*x*y + 1)/(x**2 + y**2 + 1) + 3",
    "determinant": "det(Matrix([[x, 1, y], [y, x, 1], [1, y, x]])) + 30",
    "log_sqrt": "log(1 + x**2) + sqrt(2 + y) + atan2(y, x + 3)",
}
XS = [-1.75, -0.5, 0.125, 0.9, 1.6, 2.2]
YS = [0.3, -1.2, 1.9, 0.05, -0.7, 1.1]


@pytest.mark.parametrize("name", sorted(AGREEMENT))
@pytest.mark.parametrize("backend", ["evalf", "numpy", "symengine", "auto"])
def test_every_backend_agrees_with_50_digit_evalf(name: str, backend: str) -> None:
    expr = AGREEMENT[name]
    reference = run(Evaluate(expr=expr, points={"x": XS, "y": YS}, backend="evalf", precision=50))
    assert reference["backend"] == "evalf" and len(reference["digits"]) == len(XS)
    result = run(Evaluate(expr=expr, points={"x": XS, "y": YS}, backend=backend))
    assert result["backend"] == ("symengine" if backend == "auto" else backend)
    for got, exact in zip(result["values"], reference["digits"], strict=True):
        ref = mpmath.mpf(exact)
        assert abs(ref) > 0.1, "the expression set is chosen away from zero: relative error is meaningful"
        assert abs((mpmath.mpf(got) - ref) / ref) <= 1e-12, (name, backend, got, exact)


def test_auto_falls_back_when_a_backend_cannot_do_it() -> None:
    heaviside = run(Evaluate(expr="Heaviside(x) + re(x)", points={"x": [-1.0, 2.0]}))
    assert heaviside["backend"] == "numpy" and heaviside["values"] == [-1.0, 3.0]
    precise = run(Evaluate(expr="pi", points={}, precision=30))
    assert precise["backend"] == "evalf" and precise["digits"] == ["3.14159265358979323846264338328"]


def test_values_that_are_not_finite_reals_are_none_or_imaginary() -> None:
    evalf = run(Evaluate(expr="sqrt(x)", points={"x": [4.0, -4.0]}, backend="evalf"))
    assert evalf["values"] == [2.0, 0.0] and evalf["imag"] == [0.0, 2.0]
    numpy = run(Evaluate(expr="1/x", points={"x": [0.0, 2.0]}, backend="numpy"))
    assert numpy["values"] == [None, 0.5]
    constant = run(Evaluate(expr="2*pi", points={"t": [1.0, 2.0, 3.0]}, backend="symengine"))
    assert constant["values"] == pytest.approx([2 * 3.141592653589793] * 3)


def test_a_symbol_named_like_numpy_cannot_shadow_it() -> None:
    result = run(Evaluate(expr="numpy*2 + sin(numpy)", points={"numpy": [0.5]}, backend="numpy"))
    assert result["values"] == pytest.approx([1.0 + 0.479425538604203])


def test_names_are_read_as_the_expression_is_full_width_letters_included() -> None:
    wide_x = "\uff58"  # FULLWIDTH LATIN SMALL LETTER X: Python (and the parser) read it as x
    assert run(Diff(expr=f"{wide_x}**2", wrt=wide_x))["expr"] == "2*x"
    assert run(Evaluate(expr=f"{wide_x} + 1", points={wide_x: [1.0, 2.0]}))["values"] == [2.0, 3.0]
    assert key(Diff(expr=f"{wide_x}*y", wrt=wide_x)) == key(Diff(expr="x*y", wrt="x"))


def test_a_value_a_double_backend_loses_is_an_error_or_a_fallback_never_null() -> None:
    big = "9**1000/7**1000"  # two overflows on the way, a finite quotient (about 1.39e109)
    reference = run(Evaluate(expr=big, backend="evalf"))["values"][0]
    assert reference == pytest.approx(1.3946634679473656e109)
    with pytest.raises(ToolError) as caught:
        run(Evaluate(expr=big, backend="symengine"))
    assert caught.value.rule == "backend_lost_value" and "evalf gives" in caught.value.detail
    chosen = run(Evaluate(expr=big))  # auto: the next backend that keeps it
    assert chosen["values"][0] == pytest.approx(reference) and chosen["backend"] != "symengine"
    # a pole has no value in any backend: null stays null
    assert run(Evaluate(expr="1/x", points={"x": [0.0, 2.0]}, backend="symengine"))["values"] == [None, 0.5]
