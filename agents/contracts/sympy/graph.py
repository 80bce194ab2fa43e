"""Expression graphs of SymPy results: expression -> CSE subexpression -> symbol.

:func:`expression_graph` turns a ``cse``, ``generate_code`` or ``compile``
result into :class:`memory.graph.ExpressionGraph` (``EXPRESSION_DEPENDS_ON``
edges), from the result alone, so the lineage projector builds the same graph
from the reply on the audited streams as the worker does at once; the worker
also knows the request, and adds the expressions as written.

Identities: an input expression is its canonical hash (``expr_hash``; the
``i``-th of several is ``<expr_hash>/<i>``), so a ``generate_code`` and a
single-expression ``cse`` of the same expression share its node; a
subexpression is named by the group, its CSE name and its text; a symbol by
its name. Kernels (``generate_code``, ``compile``) carry no structure but their
parameters: their expression depends on those symbols.

Names are read from the result texts (SymPy's own output) with :mod:`ast`: a
parse, never an evaluation, so no SymPy is needed in this process; a called
name is a function, a few names are SymPy constants, every other one is a symbol.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Sequence

import structlog

from bus.connection import RedisClient
from memory.graph import BestEffort, ExpressionGraph, ExpressionNode, GraphSettings, open_graph

from .payloads import CompileResult, Cse, CseResult, GenerateCodeResult, SymPyRequest, SymPyResult

log = structlog.get_logger("l9.sympy.graph")
#: Names SymPy prints for constants, not symbols.
CONSTANTS = frozenset(
    {"pi", "E", "I", "oo", "zoo", "nan", "EulerGamma", "GoldenRatio", "Catalan", "TribonacciConstant"}
    | {"S", "True", "False", "None"}
)
#: Texts longer than this are stored but not read for names.
MAX_SCAN = 50_000


def names_in(text: str) -> set[str]:
    """The symbol names ``text`` uses (functions called and constants left out)."""
    if len(text) > MAX_SCAN:
        return set()
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return set()
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and id(n) not in called and n.id not in CONSTANTS
    }


def _sub_id(group: str, name: str, text: str) -> str:
    digest = hashlib.sha256(f"{group}\0{name}\0{text}".encode()).hexdigest()[:24]
    return f"{group}:{name}:{digest}"


def _root_ids(expr_hash: str, n: int) -> list[str]:
    return [expr_hash] if n == 1 else [f"{expr_hash}/{i}" for i in range(n)]


def cse_graph(result: CseResult, texts: Sequence[str] | None = None) -> ExpressionGraph:
    """Inputs use the subexpressions and symbols of their reduced form; subexpressions those
    of their right-hand side."""
    group, reduced = result.expr_hash, result.reduced
    written = list(texts) if texts is not None and len(texts) == len(reduced) else [None] * len(reduced)
    subs = {name: _sub_id(group, name, text) for name, text in result.replacements}
    roots = _root_ids(group, len(reduced))
    nodes = [
        ExpressionNode(rid, "expression", group, text=text, reduced=form)
        for rid, text, form in zip(roots, written, reduced, strict=True)
    ]
    nodes += [
        ExpressionNode(subs[name], "subexpression", group, name=name, text=rhs)
        for name, rhs in result.replacements
    ]
    depends: list[tuple[str, str]] = []
    symbols: list[tuple[str, str]] = []
    for node_id, text in [*zip(roots, reduced, strict=True), *((subs[n], t) for n, t in result.replacements)]:
        for name in sorted(names_in(text)):
            if name in subs:
                depends.append((node_id, subs[name]))
            else:
                symbols.append((node_id, name))
    return ExpressionGraph(tuple(nodes), tuple(depends), tuple(symbols))


def kernel_graph(result: GenerateCodeResult | CompileResult, text: str | None = None) -> ExpressionGraph:
    """A kernel's expression depends on its parameters' symbols."""
    root = ExpressionNode(result.expr_hash, "expression", result.expr_hash, text=text)
    return ExpressionGraph((root,), (), tuple((root.id, name) for name in result.args))


def expression_graph(result: SymPyResult, request: SymPyRequest | None = None) -> ExpressionGraph | None:
    """The graph of a cse / generate_code / compile result (None for other operations)."""
    if isinstance(result, CseResult):
        return cse_graph(result, request.exprs if isinstance(request, Cse) else None)
    if isinstance(result, GenerateCodeResult | CompileResult):
        text = getattr(request, "expr", None)
        return kernel_graph(result, text if isinstance(text, str) else None)
    return None


class ExpressionGraphHook:
    """The worker's own write of each expression graph, after the reply: bounded, best effort."""

    def __init__(self, writes: BestEffort) -> None:
        self.writes = writes

    @classmethod
    def open(cls, settings: GraphSettings, redis: RedisClient) -> ExpressionGraphHook:
        """Writing where ``settings`` say, FalkorDB through the worker's own Redis client."""
        graph = open_graph(settings, redis=redis)
        return cls(BestEffort(graph, timeout_s=settings.graph_hook_timeout_s))

    async def record(self, request: SymPyRequest, reply: SymPyResult) -> None:
        graph = expression_graph(reply, request)
        if graph is not None and graph.nodes:
            await self.writes(
                "expression graph",
                lambda store: store.write_expressions(graph),
                op=request.op,
                expr_hash=reply.expr_hash,
            )

    async def close(self) -> None:
        await self.writes.close()
