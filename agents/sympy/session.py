"""A session's operations and results as a portable file, and its replay against a worker.

A *session* is a correlation id: every request a ``SymPyTool(session=ID)``
sends (or ``l9 sympy ... --session ID``) carries it, and the worker's reply is
caused by the request, so it carries it too. The audit trail keeps both: the
request from the tool stream and the reply from the caller's reply stream or
from ``sympy.results``, where the worker also puts every reply (a short-lived
caller's reply stream may be gone before the auditor read it). ``l9 sympy
export ID`` pairs them by ``in_reply_to``.

File format ``l9.sympy.session/1`` (JSON, UTF-8)::

    {
      "format": "l9.sympy.session/1",
      "session": "<correlation id>",
      "exported_at": "<ISO-8601 UTC>",
      "operations": [                                   # in the order the trail recorded them
        {
          "request_id": "<the request envelope id>",
          "time": "<ISO-8601 of the request>",
          "requester": "<auth, else the source of the request>",
          "type": "l9.sympy.simplify.v1",              # the request's envelope type
          "op": "simplify",
          "request": {"expr": "x + x"},                # the request payload, as sent
          "result": {                                  # the reply envelope: type and data;
            "type": "l9.sympy.expression_result.v1",   # a refusal is "l9.bus.error.v1" with
            "data": {"expr": "2*x", "ops": 1, ...}     # {"error": "sympy.<kind>", "detail": ...};
          }                                            # null: no reply was recorded
        }
      ]
    }

Replaying sends each request again (its own new envelope, in a new session)
and compares the answer with the recorded one, ignoring what legitimately
varies: ``cached``; the backend ``auto`` picked; a compiled kernel's path,
build time and ``built``. Numbers agree within a relative tolerance.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from agents.contracts.sympy.payloads import REPLY_FOR, CompileResult, Evaluate, EvaluateResult, SymPyRequest
from bus import ErrorReply, RemoteError, RpcClient
from envelope import PacketEnvelope, registry, utcnow

FORMAT = "l9.sympy.session/1"
#: Request envelope type -> request model.
REQUEST_MODELS: dict[str, type[SymPyRequest]] = {registry.type_of(m): m for m in REPLY_FOR}
ERROR_TYPE = registry.type_of(ErrorReply)
DEFAULT_REL_TOL = 1e-9
ABS_TOL = 1e-12
_VARYING: dict[str, frozenset[str]] = {
    registry.type_of(CompileResult): frozenset({"path", "build_ms", "built"})
}


class SessionFileError(ValueError):
    """A session file that cannot be replayed; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Result(_Strict):
    """A reply as recorded: its envelope type and data."""

    type: str
    data: dict[str, Any]


class Operation(_Strict):
    request_id: str
    time: AwareDatetime
    requester: str
    type: str
    op: str
    request: dict[str, Any]
    result: Result | None

    def payload(self) -> SymPyRequest:
        model = REQUEST_MODELS.get(self.type)
        if model is None:
            raise SessionFileError(f"request {self.request_id}: {self.type!r} is not a SymPy request type")
        return model.model_validate(self.request)


class SessionRecord(_Strict):
    format: Literal["l9.sympy.session/1"] = "l9.sympy.session/1"
    session: str
    exported_at: AwareDatetime
    operations: list[Operation]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "session file") -> SessionRecord:
        try:
            record = cls.model_validate_json(text)
        except ValidationError as exc:
            raise SessionFileError(f"{where}: {_first_error(exc)}") from None
        for i, operation in enumerate(record.operations):
            try:
                operation.payload()
            except ValidationError as exc:
                raise SessionFileError(f"{where}: operations.{i}.request.{_first_error(exc)}") from None
            except SessionFileError as exc:
                raise SessionFileError(f"{where}: operations.{i}: {exc}") from None
        return record


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "<root>"
    more = exc.error_count() - 1
    return f"{loc}: {err['msg']}" + (f" (and {more} more)" if more else "")


def export(session: str, envelopes: Iterable[PacketEnvelope]) -> SessionRecord:
    """The session's SymPy requests (in the given order) with the first reply to each."""
    requests: list[PacketEnvelope] = []
    replies: dict[str, PacketEnvelope] = {}
    for envelope in envelopes:
        if envelope.kind == "request" and envelope.type in REQUEST_MODELS:
            requests.append(envelope)
        elif envelope.in_reply_to and envelope.kind in ("response", "error"):
            replies.setdefault(envelope.in_reply_to, envelope)
    operations = [_operation(request, replies.get(request.id)) for request in requests]
    return SessionRecord(session=session, exported_at=utcnow(), operations=operations)


def _operation(request: PacketEnvelope, reply: PacketEnvelope | None) -> Operation:
    return Operation(
        request_id=request.id,
        time=request.time,
        requester=request.auth or request.source,
        type=request.type,
        op=REQUEST_MODELS[request.type].op,
        request=request.data,
        result=None if reply is None else Result(type=reply.type, data=reply.data),
    )


# -- replay ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    index: int
    operation: Operation
    replayed: Result

    def describe(self) -> str:
        op = self.operation
        recorded = _shown(op, op.result) if op.result is not None else "nothing"
        return (
            f"#{self.index} {op.op} (request {op.request_id}) differs:\n"
            f"  recorded: {recorded}\n"
            f"  replayed: {_shown(op, self.replayed)}"
        )


@dataclass
class ReplayReport:
    session: str
    replay_session: str
    compared: int = 0
    unrecorded: list[int] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        total = self.compared + len(self.unrecorded)
        text = (
            f"replayed {total} operation(s) of session {self.session} as session {self.replay_session}: "
            f"{len(self.differences)} differ"
        )
        if self.unrecorded:
            text += (
                f", {len(self.unrecorded)} had no recorded result (#{', #'.join(map(str, self.unrecorded))})"
            )
        return text


async def replay(
    rpc: RpcClient,
    record: SessionRecord,
    *,
    source: str,
    session: str,
    deadline_s: float = 30.0,
    rel_tol: float = DEFAULT_REL_TOL,
) -> ReplayReport:
    """Send every recorded request again, one after another, and compare the answers."""
    report = ReplayReport(record.session, session)
    for index, operation in enumerate(record.operations):
        answer = await _ask(rpc, operation.payload(), source, session, deadline_s)
        if operation.result is None:
            report.unrecorded.append(index)
            continue
        report.compared += 1
        if not same_result(operation, operation.result, answer, rel_tol):
            report.differences.append(Difference(index, operation, answer))
    return report


async def _ask(rpc: RpcClient, request: SymPyRequest, source: str, session: str, deadline_s: float) -> Result:
    try:
        reply, _ = await rpc.call(request, source=source, deadline_s=deadline_s, correlation_id=session)
    except RemoteError as exc:
        return Result(type=ERROR_TYPE, data={"error": exc.error, "detail": exc.detail})
    return Result(type=reply.type, data=reply.data)


def comparable(operation: Operation, result: Result) -> dict[str, Any]:
    """What must agree between two answers to ``operation``: the data minus what may vary."""
    ignored = {"cached", *_VARYING.get(result.type, ())}
    auto = operation.type == registry.type_of(Evaluate) and operation.request.get("backend", "auto") == "auto"
    if auto and result.type == registry.type_of(EvaluateResult):
        ignored.add("backend")
    return {"type": result.type, **{k: v for k, v in result.data.items() if k not in ignored}}


def same_result(operation: Operation, recorded: Result, replayed: Result, rel_tol: float) -> bool:
    return _same(comparable(operation, recorded), comparable(operation, replayed), rel_tol)


def _same(a: Any, b: Any, rel_tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=ABS_TOL) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y, rel_tol) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _shown(operation: Operation, result: Result) -> str:
    return json.dumps(comparable(operation, result), sort_keys=True, separators=(", ", ": "))
