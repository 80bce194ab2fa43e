"""SymPyTool: how any agent calls the SymPy worker.

    async with RpcClient(rt.redis, rt.publisher, rt.verifier) as rpc:
        tool = SymPyTool(rpc, source=rt.source)
        result = await tool.evaluate("x**2 + 1", points={"x": [1, 2, 3]})
        result.values                       # [2.0, 5.0, 10.0]
        code = await tool.generate_code("sin(x)*y", "c", name="kernel")

Every method returns the typed reply payload. Failures raise the worker's
own exceptions (:class:`ParseRejected` with rule and position,
:class:`ToolTimeout`, :class:`ToolError`), and ``bus.RpcTimeout`` when no
reply came before the deadline. Importing this module does not import SymPy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from agents.contracts.sympy.errors import ToolError, error_from_reply
from agents.contracts.sympy.payloads import (
    REPLY_FOR,
    Backend,
    Compile,
    CompileResult,
    Cse,
    CseResult,
    Diff,
    Evaluate,
    EvaluateResult,
    Expand,
    ExpressionResult,
    Factor,
    GenerateCode,
    GenerateCodeResult,
    Integrate,
    Language,
    Series,
    Simplify,
    Solve,
    SolveResult,
    SymPyRequest,
    SymPyResult,
)
from bus import RemoteError, RpcClient

R = TypeVar("R", bound=SymPyResult)
Q = TypeVar("Q", bound=SymPyRequest)


def _request(cls: type[Q], **fields: Any) -> Q:
    """The request ``cls`` of the call's arguments. A bad argument is a :class:`ToolError`
    (kind ``invalid``, rule ``bad_argument``) naming the argument and what it must be, raised
    before anything is sent, as the worker would answer it, not a pydantic ValidationError."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise ToolError("invalid", "bad_argument", _problems(exc)) from None


#: Problems named one by one in a bad-argument error; the rest are counted.
PROBLEMS_LISTED = 3


def _problems(exc: ValidationError) -> str:
    """``field: what is wrong (got 'value')``, for the first few problems, on one line.

    A refusal of the whole request (sizes and text checked before the fields: its message
    names the field) shows no value: the value is the request.
    """
    errors = exc.errors(include_url=False)
    out = []
    for error in errors[:PROBLEMS_LISTED]:
        where = ".".join(str(part) for part in error["loc"]) or "request"
        if not error["loc"]:
            out.append(f"{where}: {error['msg']}")
            continue
        got = error.get("input")
        shown = repr(got) if isinstance(got, str | int | float) else type(got).__name__
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        out.append(f"{where}: {error['msg']} (got {shown})")
    more = len(errors) - len(out)
    return "; ".join(out) + (f" (and {more} more)" if more else "")


class SymPyTool:
    """Typed calls to the SymPy worker over an :class:`RpcClient`.

    ``session`` (or ``correlation_id``: the same thing) is the correlation id every call
    carries, so ``l9 sympy export SESSION`` finds the calls and their results in the audit
    trail; None: each call is its own run.
    """

    def __init__(
        self,
        rpc: RpcClient,
        *,
        source: str,
        deadline_s: float = 30.0,
        correlation_id: str | None = None,
        session: str | None = None,
    ) -> None:
        if session is not None and correlation_id is not None and session != correlation_id:
            raise ValueError(f"session {session!r} and correlation_id {correlation_id!r} differ: give one")
        self.rpc, self.source, self.deadline_s = rpc, source, deadline_s
        self.correlation_id = session if session is not None else correlation_id

    @property
    def session(self) -> str | None:
        return self.correlation_id

    async def call(self, request: SymPyRequest, expect: type[R], *, deadline_s: float | None = None) -> R:
        """Send ``request``; its reply, or the worker's error raised as a ToolError."""
        try:
            _, reply = await self.rpc.call(
                request,
                source=self.source,
                deadline_s=deadline_s or self.deadline_s,
                correlation_id=self.correlation_id,
            )
        except RemoteError as exc:
            error = error_from_reply(exc.error, exc.detail)
            if error is None:
                raise
            raise error from None
        if not isinstance(reply, expect) or REPLY_FOR[type(request)] is not expect:
            raise ToolError("failed", "unexpected_reply", f"{type(reply).__name__} in reply to {request.op}")
        return reply

    async def evaluate(
        self,
        expr: str,
        points: Mapping[str, Iterable[float]] | None = None,
        *,
        backend: Backend = "auto",
        precision: int = 15,
        deadline_s: float | None = None,
    ) -> EvaluateResult:
        values = {name: [float(v) for v in vs] for name, vs in (points or {}).items()}
        request = _request(Evaluate, expr=expr, points=values, backend=backend, precision=precision)
        return await self.call(request, EvaluateResult, deadline_s=deadline_s)

    async def simplify(self, expr: str, *, deadline_s: float | None = None) -> ExpressionResult:
        return await self.call(_request(Simplify, expr=expr), ExpressionResult, deadline_s=deadline_s)

    async def expand(self, expr: str, *, deadline_s: float | None = None) -> ExpressionResult:
        return await self.call(_request(Expand, expr=expr), ExpressionResult, deadline_s=deadline_s)

    async def factor(self, expr: str, *, deadline_s: float | None = None) -> ExpressionResult:
        return await self.call(_request(Factor, expr=expr), ExpressionResult, deadline_s=deadline_s)

    async def diff(
        self, expr: str, wrt: str | None = None, order: int = 1, *, deadline_s: float | None = None
    ) -> ExpressionResult:
        return await self.call(
            _request(Diff, expr=expr, wrt=wrt, order=order), ExpressionResult, deadline_s=deadline_s
        )

    async def integrate(
        self,
        expr: str,
        wrt: str | None = None,
        lower: str | None = None,
        upper: str | None = None,
        *,
        deadline_s: float | None = None,
    ) -> ExpressionResult:
        request = _request(Integrate, expr=expr, wrt=wrt, lower=lower, upper=upper)
        return await self.call(request, ExpressionResult, deadline_s=deadline_s)

    async def series(
        self,
        expr: str,
        wrt: str | None = None,
        at: str = "0",
        order: int = 6,
        *,
        remove_order: bool = False,
        deadline_s: float | None = None,
    ) -> ExpressionResult:
        request = _request(Series, expr=expr, wrt=wrt, at=at, order=order, remove_order=remove_order)
        return await self.call(request, ExpressionResult, deadline_s=deadline_s)

    async def solve(
        self, *equations: str, unknowns: Iterable[str] = (), deadline_s: float | None = None
    ) -> SolveResult:
        request = _request(Solve, equations=list(equations), unknowns=list(unknowns))
        return await self.call(request, SolveResult, deadline_s=deadline_s)

    async def cse(self, *exprs: str, basic: bool = False, deadline_s: float | None = None) -> CseResult:
        request = _request(Cse, exprs=list(exprs), optimizations="basic" if basic else "none")
        return await self.call(request, CseResult, deadline_s=deadline_s)

    async def generate_code(
        self,
        expr: str,
        language: Language,
        *,
        name: str = "kernel",
        args: Iterable[str] | None = None,
        cse: bool = True,
        deadline_s: float | None = None,
    ) -> GenerateCodeResult:
        arg_list = None if args is None else list(args)
        request = _request(GenerateCode, expr=expr, language=language, name=name, args=arg_list, cse=cse)
        return await self.call(request, GenerateCodeResult, deadline_s=deadline_s)

    async def compile(
        self, expr: str, *, args: Iterable[str] | None = None, deadline_s: float | None = None
    ) -> CompileResult:
        """Build the kernel ``evaluate(..., backend="compiled")`` uses (or find it built)."""
        request = _request(Compile, expr=expr, args=None if args is None else list(args))
        return await self.call(request, CompileResult, deadline_s=deadline_s or max(self.deadline_s, 180.0))
