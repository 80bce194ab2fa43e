"""The safe parser: what it builds, what it refuses (rule, kind, position), and that it runs nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.contracts.sympy.errors import (
    ParseRejected,
    Position,
    ToolError,
    ToolTimeout,
    error_from_reply,
    error_from_wire,
)
from agents.sympy.parser import ParserLimits, canonical_hash, parse

x, y, z = sympy.symbols("x y z")

#: Audit events that mean code ran, a process started or a file opened.
WATCHED: tuple[str, ...] = ("exec", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn")
WATCHED += ("os.fork", "open", "ctypes.dlopen", "socket.connect", "object.__getattr__", "builtins.input")
_events: list[str] | None = None


def _audit(event: str, _args: tuple[object, ...]) -> None:
    if _events is not None and event.startswith(WATCHED):
        _events.append(event)


sys.addaudithook(_audit)


@contextmanager
def watched() -> Iterator[list[str]]:
    """Collect every watched audit event raised inside the block."""
    global _events
    _events = []
    try:
        yield _events
    finally:
        _events = None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x + y", x + y),
        ("x - y - z", x - y - z),
        ("a/b/c", sympy.Symbol("a") / sympy.Symbol("b") / sympy.Symbol("c")),
        ("2*x**3 - x/2", 2 * x**3 - x / 2),
        ("-x**2", -(x**2)),
        ("+x", x),
        ("sin(x)**2 + cos(x)**2", sympy.sin(x) ** 2 + sympy.cos(x) ** 2),
        ("exp(-x) * log(y, 2)", sympy.exp(-x) * sympy.log(y, 2)),
        ("sqrt(x) + Abs(y) + abs(z)", sympy.sqrt(x) + sympy.Abs(y) + sympy.Abs(z)),
        ("pi + E + I + oo", sympy.pi + sympy.E + sympy.I + sympy.oo),
        ("0.1", sympy.Float("0.1")),
        ("3j", 3.0 * sympy.I),
        ("1/3", sympy.Rational(1, 3)),
        ("x == 1", sympy.Eq(x, 1)),
        ("x <= y", sympy.Le(x, y)),
        ("Eq(x**2, 4)", sympy.Eq(x**2, 4)),
        ("factorial(5) + binomial(6, 2)", sympy.Integer(135)),
        ("det(Matrix([[x, y], [z, 1]]))", x - y * z),
        ("θ + β", sympy.Symbol("θ") + sympy.Symbol("β")),
        ("(x +\n y)", x + y),
    ],
)
def test_accepted_expressions_build_sympy_objects(text: str, expected: sympy.Basic) -> None:
    assert parse(text) == expected


def test_long_sums_are_one_level_deep() -> None:
    assert parse("+".join(["x"] * 1500), ParserLimits(max_chars=10_000, max_nodes=5_000)) == 1500 * x


def test_canonical_hash_ignores_argument_order_only() -> None:
    assert canonical_hash(parse("x+y")) == canonical_hash(parse("y+x"))
    assert canonical_hash(parse("2*x*y")) == canonical_hash(parse("y*x*2"))
    assert canonical_hash(parse("x-y")) != canonical_hash(parse("y-x"))
    assert canonical_hash(parse("x"), parse("y")) != canonical_hash(parse("y"), parse("x"))


INJECTIONS = [
    ("__import__('os').system('id')", "forbidden_name", Position(1, 1, 0)),
    ("().__class__.__bases__[0].__subclasses__()", "forbidden_name", Position(1, 4, 3)),
    ("x.__globals__", "forbidden_name", Position(1, 3, 2)),
    ("eval('1')", "forbidden_name", Position(1, 1, 0)),
    ("exec", "forbidden_name", Position(1, 1, 0)),
    ("open('CANARY', 'w')", "forbidden_name", Position(1, 1, 0)),
    ("sin(x) + _secret", "forbidden_name", Position(1, 10, 9)),
    ("lambda: 1", "forbidden_syntax", Position(1, 1, 0)),
    ("(lambda: 1)()", "forbidden_syntax", Position(1, 2, 1)),
    ("x.real", "forbidden_attribute", Position(1, 1, 0)),
    ("x[0]", "forbidden_syntax", Position(1, 1, 0)),
    ("f'{x}'", "forbidden_literal", Position(1, 1, 0)),
    ("'os'", "forbidden_literal", Position(1, 1, 0)),
    ("b'x'", "forbidden_literal", Position(1, 1, 0)),
    ("True", "forbidden_literal", Position(1, 1, 0)),
    ("[x for x in y]", "forbidden_syntax", Position(1, 1, 0)),
    ("(y := 1)", "forbidden_syntax", Position(1, 2, 1)),
    ("x if y else z", "forbidden_syntax", Position(1, 1, 0)),
    ("x and y", "forbidden_syntax", Position(1, 1, 0)),
    ("not x", "forbidden_syntax", Position(1, 1, 0)),
    ("x ^ 2", "forbidden_syntax", Position(1, 1, 0)),
    ("x // 2", "forbidden_syntax", Position(1, 1, 0)),
    ("1 < x < 2", "forbidden_syntax", Position(1, 1, 0)),
    ("x in y", "forbidden_syntax", Position(1, 1, 0)),
    ("sin(x=1)", "forbidden_syntax", Position(1, 1, 0)),
    ("sin(*x)", "forbidden_syntax", Position(1, 1, 0)),
    ("foo(x)", "unknown_function", Position(1, 1, 0)),
    ("x + system(1)", "unknown_function", Position(1, 5, 4)),
    ("{1: x}", "forbidden_syntax", Position(1, 1, 0)),
]


@pytest.mark.parametrize(("text", "rule", "position"), INJECTIONS)
def test_injections_are_refused_as_forbidden_and_run_nothing(
    text: str, rule: str, position: Position, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with watched() as events, pytest.raises(ParseRejected) as caught:
        parse(text)
    assert (caught.value.kind, caught.value.rule, caught.value.position) == ("forbidden", rule, position)
    assert caught.value.violation
    assert events == []
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize(
    ("text", "limits", "rule"),
    [
        ("x" * 11, ParserLimits(max_chars=10), "max_length"),
        ("x+y+z", ParserLimits(max_nodes=2), "max_nodes"),
        ("sin(sin(sin(x)))", ParserLimits(max_depth=3), "max_depth"),
        ("-" * 1500 + "x", ParserLimits(), "max_depth"),
        ("2**10**10**10", ParserLimits(), "max_exponent"),
        ("x**1001", ParserLimits(), "max_exponent"),
        ("factorial(10**8)", ParserLimits(), "max_factorial"),
        ("gamma(10**6)", ParserLimits(), "max_factorial"),
        ("binomial(10**8, 5)", ParserLimits(), "max_factorial"),
        ("9" * 1001, ParserLimits(), "max_integer_digits"),
        ("0x" + "f" * 900, ParserLimits(), "max_integer_digits"),
        ("(10**999)**2", ParserLimits(), "max_integer_digits"),
        ("factorial(999)", ParserLimits(), "max_integer_digits"),
        ("10**999 * 10**999", ParserLimits(), "max_integer_digits"),
        ("1e999", ParserLimits(), "float_range"),
        ("x" * 65, ParserLimits(), "max_name_length"),
        ("det(Matrix([[1, 2], [3, 4]]))", ParserLimits(max_matrix_entries=3), "max_matrix_entries"),
    ],
)
def test_limit_breaches_are_their_own_kind(text: str, limits: ParserLimits, rule: str) -> None:
    with pytest.raises(ParseRejected) as caught:
        parse(text, limits)
    assert (caught.value.kind, caught.value.rule) == ("limit", rule)


def test_limits_allow_what_is_just_inside_them() -> None:
    assert parse("10**999") == sympy.Integer(10) ** 999
    assert parse("x**1000") == x**1000
    assert parse("x" * 10, ParserLimits(max_chars=10)) == sympy.Symbol("x" * 10)


@pytest.mark.parametrize(
    ("text", "kind", "rule", "position"),
    [
        ("x +", "syntax", "syntax", Position(1, 4, 3)),
        ("sin(x", "syntax", "syntax", Position(1, 4, 3)),
        ("é + (", "syntax", "syntax", Position(1, 5, 4)),
        ("x\0", "syntax", "syntax", Position(1, 2, 1)),
        ("(é +\n y.__class__)", "forbidden", "forbidden_name", Position(2, 4, 8)),
        ("sin", "invalid", "function_without_call", Position(1, 1, 0)),
        ("sin(x, y)", "invalid", "arity", Position(1, 1, 0)),
        ("Matrix([[1]])", "invalid", "not_scalar", Position(1, 1, 0)),
        ("Matrix([[1]]) + 1", "invalid", "invalid_operation", Position(1, 1, 0)),
        ("x < I", "invalid", "invalid_operation", Position(1, 1, 0)),
    ],
)
def test_rejections_name_kind_rule_and_character_position(
    text: str, kind: str, rule: str, position: Position
) -> None:
    with pytest.raises(ParseRejected) as caught:
        parse(text)
    assert (caught.value.kind, caught.value.rule, caught.value.position) == (kind, rule, position)
    assert caught.value.violation == (kind == "forbidden")


def test_errors_survive_the_pipe_and_the_error_reply() -> None:
    for error in [
        ParseRejected("forbidden", "forbidden_name", "__class__ is not allowed: x: y", Position(2, 4, 9)),
        ToolTimeout("expand ran past 2s"),
        ToolError("limit", "memory", "the worker ran out of its 1024 MB"),
    ]:
        for copy in (error_from_wire(error.to_wire()), error_from_reply(*error.reply_fields())):
            assert type(copy) is type(error)
            assert (copy.kind, copy.rule, copy.detail, copy.position) == (
                error.kind,
                error.rule,
                error.detail,
                error.position,
            )
    assert error_from_reply("bus.other", "x") is None


TOKENS = [
    "x", "y", "1", "10", "2.5", "3j", "0x1f", "(", ")", "[", "]", ",", ".", ":", " ", "\n", "+", "-",
    "*", "**", "/", "//", "%", "^", "@", "==", "<", ">=", "=", "not ", " and ", " if ", " else ",
    "lambda ", "'", '"', "f'", "{", "}", "__import__", "__class__", "__subclasses__", "_x", "os",
    "system", "eval", "open", "sin", "factorial", "gamma", "Matrix", "det", "log", "Eq", "pi", "I", "oo",
    "θ", "\0", "\\", "#", "*x", "**{}", "1e308", "9" * 30,
]  # fmt: skip


def _only_rejections(text: str) -> None:
    with watched() as events:
        try:
            result = parse(text)
        except ParseRejected as exc:
            assert exc.position is not None and 0 <= exc.position.offset <= len(text)
        else:
            assert isinstance(result, sympy.Basic)
    assert events == []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=120))
def test_fuzz_arbitrary_text_is_built_or_rejected(text: str) -> None:
    _only_rejections(text)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=30).map("".join))
def test_fuzz_token_soup_is_built_or_rejected(text: str) -> None:
    _only_rejections(text)


def test_the_watch_sees_code_that_sympify_runs() -> None:
    """The watch is not blind: sympify of a harmless string already evaluates Python code."""
    with watched() as events:
        sympy.sympify("x + 1")
    assert "exec" in events
