"""The SymPy worker: safe parsing, isolated symbolic/numeric operations, and its client.

Importing this package does not import SymPy: only the worker's subprocesses
parse and compute (``agents.sympy.parser``, ``.operations``). Agents call the
worker with :class:`SymPyTool` (:mod:`agents.tools.sympy`, re-exported here); the worker
itself is ``l9 agent run sympy``.
"""

from agents.contracts.sympy.errors import ParseRejected, Position, ToolError, ToolTimeout
from agents.contracts.sympy.payloads import (
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
    Series,
    Simplify,
    Solve,
    SolveResult,
    SymPyRequest,
    SymPyResult,
    Violation,
)
from agents.tools.sympy import SymPyTool
from bus.topology import SYMPY_EVENTS_STREAM as EVENTS_STREAM

from .telemetry import OperationEvent

__all__ = [
    "EVENTS_STREAM",
    "Compile",
    "CompileResult",
    "Cse",
    "CseResult",
    "Diff",
    "Evaluate",
    "EvaluateResult",
    "Expand",
    "ExpressionResult",
    "Factor",
    "GenerateCode",
    "GenerateCodeResult",
    "Integrate",
    "OperationEvent",
    "ParseRejected",
    "Position",
    "Series",
    "Simplify",
    "Solve",
    "SolveResult",
    "SymPyRequest",
    "SymPyResult",
    "SymPyTool",
    "ToolError",
    "ToolTimeout",
    "Violation",
]
