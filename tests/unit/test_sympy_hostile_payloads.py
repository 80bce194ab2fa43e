"""Request sizes are bounded on the wire: the models refuse what the worker would refuse, first.

The parser accepts 2,000 characters per expression; the models used to accept 1,000,000 per
field in lists of up to 256 (a 256 MB cse request reached the worker). Now every expression
field, every list and every request as a whole is bounded, checked on the raw lengths before
any field is validated, and the error names the field.
"""

from __future__ import annotations

from typing import Any

import pytest
import sympy
from pydantic import ValidationError

from agents.contracts.sympy.errors import ToolError
from agents.contracts.sympy.payloads import (
    ARGS_MAX,
    CSE_EXPRS_MAX,
    EQUATIONS_MAX,
    EXPR_MAX,
    POINT_SYMBOLS_MAX,
    POINT_VALUES_MAX,
    POINTS_MAX,
    REPLY_FOR,
    REQUEST_CHARS_MAX,
    Compile,
    Cse,
    Evaluate,
    GenerateCode,
    Integrate,
    Series,
    Solve,
    SymPyRequest,
)
from agents.sympy import grammar
from agents.sympy.parser import ParserLimits, parse
from agents.tools.sympy import _request
from envelope import EnvelopeError, PacketEnvelope, registry

TOO_LONG = "x" * (EXPR_MAX + 1)
#: Every expression field of every request model, with the other fields it needs.
EXPRESSION_FIELDS: list[tuple[type[SymPyRequest], str, dict[str, Any]]] = [
    *[
        (model, "expr", {})
        for model in REPLY_FOR
        if "expr" in model.expr_fields and model is not GenerateCode
    ],
    (GenerateCode, "expr", {"language": "c"}),
    (Integrate, "lower", {"expr": "x", "upper": "1"}),
    (Integrate, "upper", {"expr": "x", "lower": "0"}),
    (Series, "at", {"expr": "x"}),
]


def refusal(model: type[SymPyRequest], data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    first: dict[str, Any] = dict(caught.value.errors(include_url=False)[0])
    return first


def test_the_wire_accepts_exactly_what_the_parser_accepts() -> None:
    assert ParserLimits().max_chars == EXPR_MAX
    longest = "+".join(["x"] * (EXPR_MAX // 2)) + " "  # 2000 characters, 1999 nodes
    assert len(longest) == EXPR_MAX
    assert parse(Evaluate(expr=longest).expr) == sympy.Symbol("x") * (EXPR_MAX // 2)


@pytest.mark.parametrize(
    ("model", "field", "others"), EXPRESSION_FIELDS, ids=lambda v: getattr(v, "__name__", v)
)
def test_every_expression_field_refuses_more_than_the_parser_accepts(
    model: type[SymPyRequest], field: str, others: dict[str, Any]
) -> None:
    model.model_validate({**others, field: "x" * EXPR_MAX})
    error = refusal(model, {**others, field: TOO_LONG})
    assert error["type"] == "too_large"
    assert error["msg"] == f"{field}: {EXPR_MAX + 1} characters, over {EXPR_MAX}"


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        (Solve, {"equations": ["x"] * (EQUATIONS_MAX + 1)}, f"equations: 65 items, over {EQUATIONS_MAX}"),
        (Solve, {"equations": ["x"], "unknowns": ["x"] * 65}, f"unknowns: 65 items, over {EQUATIONS_MAX}"),
        (Solve, {"equations": ["x", TOO_LONG]}, f"equations.1: 2001 characters, over {EXPR_MAX}"),
        (Cse, {"exprs": ["x"] * (CSE_EXPRS_MAX + 1)}, f"exprs: 257 items, over {CSE_EXPRS_MAX}"),
        (Cse, {"exprs": ["x", "y", TOO_LONG]}, f"exprs.2: 2001 characters, over {EXPR_MAX}"),
        (
            GenerateCode,
            {"expr": "x", "language": "c", "args": ["x"] * 257},
            f"args: 257 items, over {ARGS_MAX}",
        ),
        (Compile, {"expr": "x", "args": ["x"] * 257}, f"args: 257 items, over {ARGS_MAX}"),
        (
            Evaluate,
            {"expr": "x", "points": {f"x{i}": [] for i in range(POINT_SYMBOLS_MAX + 1)}},
            f"points: 257 items, over {POINT_SYMBOLS_MAX}",
        ),
        (
            Evaluate,
            {"expr": "x", "points": {"x": [0.5] * (POINTS_MAX + 1)}},
            f"points.x: 1000001 values, over {POINTS_MAX}",
        ),
    ],
    ids=[
        "equations",
        "unknowns",
        "equation",
        "exprs",
        "cse-expr",
        "codegen-args",
        "compile-args",
        "symbols",
        "values",
    ],
)
def test_lists_are_bounded_and_the_error_names_the_field(
    model: type[SymPyRequest], data: dict[str, Any], message: str
) -> None:
    error = refusal(model, data)
    assert (error["type"], error["msg"]) == ("too_large", message)


def test_a_request_is_bounded_as_a_whole() -> None:
    """Each expression within its bound, the request over its total: refused, naming its fields."""
    full = "x" * EXPR_MAX
    n = REQUEST_CHARS_MAX // EXPR_MAX
    Cse(exprs=[full] * n)
    error = refusal(Cse, {"exprs": [full] * (n + 1)})
    assert (
        error["msg"]
        == f"exprs: {(n + 1) * EXPR_MAX} characters of expressions in all, over {REQUEST_CHARS_MAX}"
    )
    half = POINT_VALUES_MAX // 2
    Evaluate(expr="x + y", points={"x": [0.5] * half, "y": [0.5] * half})
    error = refusal(Evaluate, {"expr": "x", "points": {"x": [0.5] * half, "y": [0.5] * half, "z": [0.5]}})
    assert error["msg"] == f"points: {POINT_VALUES_MAX + 1} values in all, over {POINT_VALUES_MAX}"


def test_a_256_mb_request_is_refused_on_its_lengths_alone() -> None:
    """The request of the finding: 256 fields of 1,000,000 characters. The same strings are
    shared (no 256 MB allocated here); what matters is that nothing looks into them."""
    huge = "x" * 1_000_000
    error = refusal(Cse, {"exprs": [huge] * 256})
    assert error["msg"] == f"exprs.0: 1000000 characters, over {EXPR_MAX}"
    assert error["loc"] == () and error["input"]["exprs"][0] is huge


def test_the_worker_refuses_an_oversized_envelope_as_an_invalid_payload_naming_the_field() -> None:
    envelope = PacketEnvelope.new(
        type="l9.sympy.cse.v1",
        source="agent://hostile/raw",
        data={"exprs": ["x" * 1_000_000] * 256},
        kind="request",
    )
    with pytest.raises(EnvelopeError) as caught:
        registry.load(envelope)
    assert "exprs.0: 1000000 characters, over 2000" in str(caught.value)


def test_the_client_refuses_before_sending_with_a_tool_error_naming_the_field() -> None:
    with pytest.raises(ToolError) as caught:
        _request(Cse, exprs=["x" * 1_000_000] * 256, optimizations="none")
    assert (caught.value.kind, caught.value.rule) == ("invalid", "bad_argument")
    assert caught.value.detail.startswith("request: exprs.0: 1000000 characters, over 2000")
    assert len(caught.value.detail) < 400, "the detail is one short line, not the input"


def test_many_bad_fields_are_summarised_not_listed_one_by_one() -> None:
    with pytest.raises(ToolError) as caught:
        _request(Solve, equations=["x"], unknowns=["1bad"] * 64)
    assert "unknowns.0: String should match pattern" in caught.value.detail
    assert caught.value.detail.endswith("(and 61 more)") and len(caught.value.detail) < 1000


def test_a_c_level_memory_failure_in_a_constructor_is_not_an_invalid_expression(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SystemError`` out of a SymPy constructor is the worker running out of memory: it goes
    up to the pool (which answers ``limit.memory`` and replaces the process), never ``invalid``."""

    def failing(*args: Any) -> Any:
        raise SystemError("error return without exception set")

    monkeypatch.setitem(grammar.FUNCTIONS, "sin", grammar.Function(failing))
    with pytest.raises(SystemError):
        parse("sin(x)")


@pytest.mark.parametrize(
    ("model", "data", "where"),
    [(Cse, {"exprs": ["x", "y\udc80"]}, "exprs.1"), (Solve, {"equations": ["x\ud800 - 1"]}, "equations.0")],
    ids=["cse", "solve"],
)
def test_a_lone_surrogate_in_a_list_of_expressions_is_refused_not_sent(
    model: type[SymPyRequest], data: dict[str, Any], where: str
) -> None:
    """A single expression field refuses a lone surrogate (pydantic's own check); an item of a
    list was let through and crashed the client's encoder on the way out."""
    error = refusal(model, data)
    assert error["type"] == "string_unicode" and error["msg"].startswith(f"{where}: a lone surrogate U+D")
