"""What the safe parser accepts: constants, whitelisted functions and their arities.

Everything not listed here is refused. Functions whose value grows
explosively with an integer argument (``factorial``, ``gamma``, ``binomial``)
are *guarded*: a numeric argument above ``max_factorial`` is a limit breach,
caught before SymPy evaluates it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy

#: Names that are only ever used to escape a sandbox; a use is reported as such.
DANGEROUS_NAMES: frozenset[str] = frozenset(
    {
        "eval", "exec", "compile", "open", "input", "breakpoint", "help", "exit", "quit",
        "getattr", "setattr", "delattr", "hasattr", "globals", "locals", "vars", "dir",
        "type", "object", "super", "classmethod", "staticmethod", "property", "memoryview",
        "os", "sys", "subprocess", "builtins", "importlib", "ctypes", "pickle", "marshal",
        "lambdify", "sympify", "parse_expr",
    }
)  # fmt: skip

CONSTANTS: dict[str, Any] = {
    "pi": sympy.pi,
    "E": sympy.E,
    "I": sympy.I,
    "oo": sympy.oo,
    "EulerGamma": sympy.EulerGamma,
    "GoldenRatio": sympy.GoldenRatio,
}


@dataclass(frozen=True)
class Function:
    """A callable the parser may build: SymPy's constructor, its arity, whether it is guarded."""

    build: Callable[..., Any]
    min_args: int = 1
    max_args: int = 1
    guarded: bool = False


def _det(matrix: Any) -> Any:
    if not isinstance(matrix, sympy.MatrixBase):
        raise TypeError("det() takes a Matrix")
    return matrix.det(method="berkowitz")  # division-free: no cancel() of huge rational functions


def _unary(*names: str) -> dict[str, Function]:
    return {name: Function(getattr(sympy, name)) for name in names}


FUNCTIONS: dict[str, Function] = {
    **_unary("sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "acot"),
    **_unary("sinh", "cosh", "tanh", "coth", "asinh", "acosh", "atanh"),
    **_unary("exp", "sqrt", "cbrt", "Abs", "sign", "floor", "ceiling", "erf", "erfc", "Heaviside"),
    **_unary("re", "im", "conjugate", "arg"),
    "abs": Function(sympy.Abs),
    "ln": Function(sympy.log),
    "log": Function(sympy.log, 1, 2),
    "atan2": Function(sympy.atan2, 2, 2),
    "root": Function(sympy.root, 2, 2),
    "Min": Function(sympy.Min, 1, 64),
    "Max": Function(sympy.Max, 1, 64),
    "factorial": Function(sympy.factorial, guarded=True),
    "gamma": Function(sympy.gamma, guarded=True),
    "binomial": Function(sympy.binomial, 2, 2, guarded=True),
    "Eq": Function(sympy.Eq, 2, 2),
    "Ne": Function(sympy.Ne, 2, 2),
    "Lt": Function(sympy.Lt, 2, 2),
    "Le": Function(sympy.Le, 2, 2),
    "Gt": Function(sympy.Gt, 2, 2),
    "Ge": Function(sympy.Ge, 2, 2),
    "det": Function(_det),
}

#: ``Matrix([[a, b], [c, d]])``: the only place a list literal is allowed.
MATRIX = "Matrix"
