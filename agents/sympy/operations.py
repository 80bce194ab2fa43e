"""The operations as a worker subprocess runs them: parse every expression, then compute.

A :class:`Job` has two phases. ``key`` only parses and returns the canonical
hash of the expressions and the cache key digest of the whole request (the
canonical forms plus every other parameter), so the parent can look in the
cache before anything expensive runs. ``run`` computes the reply's fields; a
job of the agent (``defer_builds``) that needs a kernel not yet built answers
its build plan instead, and the agent runs the compilers outside the pool
(:mod:`.builds`).

Everything returned is plain data (str, int, float, lists, dicts): SymPy
objects never leave the subprocess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import sympy

from agents.contracts.sympy.errors import ParseRejected, ToolError
from agents.contracts.sympy.payloads import (
    RESULT_MAX,
    Compile,
    Cse,
    Diff,
    Evaluate,
    GenerateCode,
    Integrate,
    Series,
    Solve,
    SymPyRequest,
)

from . import codegen
from .compiled import BuildNeeded, KernelStore
from .evaluate import evaluate
from .parser import ParserLimits, canonical_hash, parse

Fields = dict[str, list[Any]]
Operation = Callable[[Any, Fields, "ToolConfig", str], dict[str, Any]]


@dataclass(frozen=True)
class ToolConfig:
    """What a worker subprocess is configured with (picklable: it crosses into the child)."""

    parser: ParserLimits = field(default_factory=ParserLimits)
    max_points: int = 1_000_000
    #: Compiled kernels on disk; None: no ``compiled`` backend, no ``compile`` operation.
    kernel_dir: str | None = None
    compile_timeout_s: float = 120.0
    #: True: a kernel to build is answered as its plan (``{"build": ...}``), not built here.
    defer_builds: bool = False

    def kernels(self) -> KernelStore | None:
        if self.kernel_dir is None:
            return None
        return KernelStore(self.kernel_dir, self.compile_timeout_s, defer_builds=self.defer_builds)


@dataclass(frozen=True)
class Job:
    phase: Literal["key", "run"]
    request: SymPyRequest
    #: The agent's jobs: a kernel is built by the agent, outside the pool (:mod:`.builds`).
    defer_builds: bool = False


def execute(limits: ToolConfig, job: Job) -> dict[str, Any]:
    """The handler of the worker pool (``functools.partial(execute, limits)``).

    With ``job.defer_builds`` an operation that needs a kernel not yet built answers
    ``{"expr_hash": ..., "build": <BuildPlan as a dict>}`` instead of its fields: its
    source is generated here, the compiler is the caller's to run.
    """
    fields = _parse_fields(job.request, limits.parser)
    expr_hash = canonical_hash(*(e for exprs in fields.values() for e in exprs))
    if job.phase == "key":
        return {"expr_hash": expr_hash, "key": request_key(job.request, fields)}
    operation = OPERATIONS.get(job.request.op)
    if operation is None:
        raise ToolError("invalid", "unknown_operation", f"no operation {job.request.op!r}")
    if job.defer_builds:
        limits = dataclasses.replace(limits, defer_builds=True)
    try:
        return {"expr_hash": expr_hash, **operation(job.request, fields, limits, expr_hash)}
    except BuildNeeded as needed:
        return {"expr_hash": expr_hash, "build": needed.plan.as_dict()}


def request_key(request: SymPyRequest, fields: Fields) -> str:
    """Digest of the canonical expressions and every other parameter of the request."""
    canonical = [[name, [sympy.srepr(e) for e in exprs]] for name, exprs in fields.items()]
    text = json.dumps([canonical, request.params()], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _parse_fields(request: SymPyRequest, limits: ParserLimits) -> Fields:
    fields: Fields = {}
    for name, texts in request.expression_texts():
        fields[name] = [
            _parse_one(text, limits, name if len(texts) == 1 else f"{name}[{i}]")
            for i, text in enumerate(texts)
        ]
    return fields


def _parse_one(text: str, limits: ParserLimits, where: str) -> Any:
    try:
        return parse(text, limits)
    except ParseRejected as exc:
        raise ParseRejected(exc.kind, exc.rule, f"{where}: {exc.detail}", exc.position) from None


# -- the operations ------------------------------------------------------------------------
def _expression(value: Any) -> dict[str, Any]:
    text = sympy.sstr(value)
    if len(text) > RESULT_MAX:
        raise ToolError(
            "limit", "max_result_size", f"the result has {len(text)} characters (over {RESULT_MAX})"
        )
    return {"expr": text, "ops": int(sympy.count_ops(value))}


def _variable(expr: Any, wrt: str | None) -> Any:
    if wrt is not None:
        return sympy.Symbol(wrt)
    free = sorted(expr.free_symbols, key=lambda s: s.name)
    if len(free) != 1:
        names = ", ".join(s.name for s in free) or "none"
        raise ToolError("invalid", "ambiguous_variable", f"name the variable (wrt): the symbols are {names}")
    return free[0]


def _evaluate(request: Evaluate, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    expr, store = fields["expr"][0], limits.kernels()
    values = evaluate(
        expr, request.points, request.backend, request.precision, expr_hash, limits.max_points, store
    )
    return values.as_dict()


def _simplify(request: Any, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    return _expression(sympy.simplify(fields["expr"][0]))


def _expand(request: Any, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    return _expression(sympy.expand(fields["expr"][0]))


def _factor(request: Any, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    return _expression(sympy.factor(fields["expr"][0]))


def _diff(request: Diff, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    expr = fields["expr"][0]
    return _expression(sympy.diff(expr, _variable(expr, request.wrt), request.order))


def _integrate(request: Integrate, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    expr, lower, upper = fields["expr"][0], fields["lower"], fields["upper"]
    x = _variable(expr, request.wrt)
    if len(lower) != len(upper):
        raise ToolError("invalid", "bounds", "give both bounds (definite) or neither (antiderivative)")
    return _expression(sympy.integrate(expr, (x, lower[0], upper[0]) if lower else x))


def _series(request: Series, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    expr = fields["expr"][0]
    result = sympy.series(expr, _variable(expr, request.wrt), fields["at"][0], request.order)
    return _expression(result.removeO() if request.remove_order else result)


def _solve(request: Solve, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    unknowns = [sympy.Symbol(n) for n in request.unknowns]
    solutions = sympy.solve(fields["equations"], *unknowns, dict=True)
    return {"solutions": [{str(k): sympy.sstr(v) for k, v in s.items()} for s in solutions]}


def _cse(request: Cse, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    exprs = fields["exprs"]
    optimizations = "basic" if request.optimizations == "basic" else None
    replacements, reduced = sympy.cse(exprs, optimizations=optimizations)
    after = sum(sympy.count_ops(e) for _, e in replacements) + sum(sympy.count_ops(e) for e in reduced)
    return {
        "replacements": [(s.name, sympy.sstr(e)) for s, e in replacements],
        "reduced": [sympy.sstr(e) for e in reduced],
        "ops_before": int(sum(sympy.count_ops(e) for e in exprs)),
        "ops_after": int(after),
    }


def _generate_code(
    request: GenerateCode, fields: Fields, limits: ToolConfig, expr_hash: str
) -> dict[str, Any]:
    code = codegen.generate(fields["expr"][0], request.language, request.name, request.args, request.cse)
    return {"language": request.language, "name": request.name, **code}


def _compile(request: Compile, fields: Fields, limits: ToolConfig, expr_hash: str) -> dict[str, Any]:
    store, expr = limits.kernels(), fields["expr"][0]
    if store is None:
        raise ToolError("invalid", "no_kernel_store", "this worker has no directory for compiled kernels")
    if not isinstance(expr, sympy.Expr):
        raise ToolError("invalid", "not_numeric", f"cannot compile a {type(expr).__name__}")
    args = request.args if request.args is not None else sorted(s.name for s in expr.free_symbols)
    return store.ensure(expr, args, expr_hash).as_dict()


OPERATIONS: dict[str, Operation] = {
    "evaluate": _evaluate,
    "simplify": _simplify,
    "expand": _expand,
    "factor": _factor,
    "diff": _diff,
    "integrate": _integrate,
    "series": _series,
    "solve": _solve,
    "cse": _cse,
    "generate_code": _generate_code,
    "compile": _compile,
}
