"""Session files: requests paired with their replies, what a replay compares, and bad files named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.sympy.session import (
    Operation,
    Result,
    SessionFileError,
    SessionRecord,
    export,
    same_result,
)
from envelope import PacketEnvelope

CALLER = "agent://caller/caller-0"
WORKER = "agent://sympy/sympy-0"


def ask(type_: str, data: dict[str, Any], session: str = "s1") -> PacketEnvelope:
    return PacketEnvelope.new(type=type_, source=CALLER, data=data, kind="request", correlation_id=session)


def answer(
    request: PacketEnvelope, type_: str, data: dict[str, Any], kind: str = "response"
) -> PacketEnvelope:
    return PacketEnvelope.new(
        type=type_,
        source=WORKER,
        data=data,
        kind=kind,
        correlation_id=request.correlation_id,
        causation_id=request.id,
        in_reply_to=request.id,
    )


def test_requests_are_paired_with_their_first_reply_in_trail_order() -> None:
    simplify = ask("l9.sympy.simplify.v1", {"expr": "x + x"})
    refused = ask("l9.sympy.expand.v1", {"expr": "eval(x)"})
    unanswered = ask("l9.sympy.factor.v1", {"expr": "x**2 - 1"})
    reply = answer(simplify, "l9.sympy.expression_result.v1", {"expr": "2*x", "ops": 1, "expr_hash": "h"})
    again = answer(simplify, "l9.sympy.expression_result.v1", {"expr": "2*x", "ops": 1, "expr_hash": "h2"})
    error = answer(refused, "l9.bus.error.v1", {"error": "sympy.forbidden", "detail": "d"}, kind="error")
    unrelated = PacketEnvelope.new(type="l9.sympy.operation.v1", source=WORKER, data={}, correlation_id="s1")
    record = export("s1", [simplify, refused, unrelated, reply, error, again, unanswered])
    assert [(op.op, op.request_id) for op in record.operations] == [
        ("simplify", simplify.id),
        ("expand", refused.id),
        ("factor", unanswered.id),
    ]
    first, second, third = record.operations
    assert first.result == Result(type="l9.sympy.expression_result.v1", data=reply.data)
    assert second.result is not None and second.result.data["error"] == "sympy.forbidden"
    assert third.result is None and first.requester == CALLER and first.request == {"expr": "x + x"}
    again_read = SessionRecord.from_json(record.to_json())
    assert again_read == record and json.loads(record.to_json())["format"] == "l9.sympy.session/1"


def operation(type_: str, request: dict[str, Any]) -> Operation:
    return Operation(request_id="r", time="2026-01-01T00:00:00Z", requester=CALLER, type=type_,
                     op=type_.split(".")[2], request=request, result=None)  # fmt: skip


def test_a_replay_ignores_what_may_vary_and_nothing_else() -> None:
    evaluate = operation("l9.sympy.evaluate.v1", {"expr": "x", "points": {"x": [1.0]}, "backend": "auto"})
    kind = "l9.sympy.evaluate_result.v1"
    recorded = Result(type=kind, data={"backend": "symengine", "values": [0.1 + 0.2], "expr_hash": "h"})
    replayed = Result(type=kind, data={"backend": "compiled", "values": [0.3], "expr_hash": "h", "cached": 1})
    assert same_result(evaluate, recorded, replayed, 1e-9), "cached, auto's backend, last-bit rounding vary"
    off = Result(type=replayed.type, data={**replayed.data, "values": [0.3001]})
    assert not same_result(evaluate, recorded, off, 1e-9)
    assert same_result(evaluate, recorded, off, 1e-3)
    numpy = operation("l9.sympy.evaluate.v1", {"expr": "x", "points": {}, "backend": "numpy"})
    assert not same_result(numpy, recorded, replayed, 1e-9), "a backend that was asked for must match"
    compile_ = operation("l9.sympy.compile.v1", {"expr": "x"})
    built = {"kernel_hash": "k", "path": "/a/l9k.so", "args": ["x"], "params": ["x"], "build_ms": 900.0,
             "built": True, "expr_hash": "h"}  # fmt: skip
    found = {**built, "path": "/b/l9k.so", "build_ms": 0.0, "built": False}
    compiled = "l9.sympy.compile_result.v1"
    assert same_result(compile_, Result(type=compiled, data=built), Result(type=compiled, data=found), 1e-9)
    other = {**found, "kernel_hash": "k2"}
    assert not same_result(
        compile_, Result(type=compiled, data=built), Result(type=compiled, data=other), 1e-9
    )


def test_an_error_differs_from_a_result_and_from_another_error() -> None:
    simplify = operation("l9.sympy.simplify.v1", {"expr": "x"})
    result = Result(type="l9.sympy.expression_result.v1", data={"expr": "x", "ops": 0, "expr_hash": "h"})
    error = Result(
        type="l9.bus.error.v1", data={"error": "sympy.timeout", "detail": "wall_clock: ran past 2s"}
    )
    other = Result(type="l9.bus.error.v1", data={"error": "sympy.limit", "detail": "memory: over 1024 MB"})
    assert not same_result(simplify, result, error, 1e-9)
    assert not same_result(simplify, error, other, 1e-9)
    assert same_result(simplify, error, error, 1e-9)
    assert not same_result(
        simplify, result, Result(type=result.type, data={**result.data, "ops": True}), 1e-9
    )


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d.update(format="l9.sympy.session/2"), "format: Input should be 'l9.sympy.session/1'"),
        (lambda d: d["operations"][0].pop("request"), "operations.0.request: Field required"),
        (lambda d: d["operations"][0].update(type="l9.demo.task.v1"), "operations.0: request r"),
        (
            lambda d: d["operations"][0]["request"].update(expr=7),
            "operations.0.request.expr: Input should be a valid",
        ),
    ],
)
def test_a_bad_session_file_is_refused_naming_the_field(mangle: Any, message: str) -> None:
    good = SessionRecord(session="s1", exported_at="2026-01-01T00:00:00Z",
                         operations=[operation("l9.sympy.simplify.v1", {"expr": "x"})])  # fmt: skip
    data = json.loads(good.to_json())
    mangle(data)
    with pytest.raises(SessionFileError) as caught:
        SessionRecord.from_json(json.dumps(data), "s.json")
    assert str(caught.value).startswith("s.json: ") and message in str(caught.value)
