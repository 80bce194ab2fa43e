"""Stable forms: a kernel's checked code rewritten where floating point would overflow or cancel.

The SymPy worker prints a formula as written, so ``log(exp(x) + exp(y))`` overflows to
``inf`` from ``x = 710`` (the true value is about ``x``) and ``(1 + erf(x))/2`` is ``0``
at ``x = -8.5`` (the true value is ``1.4e-33``). :func:`stabilise` rewrites the syntax
tree of each statement (numpy/math calls already checked by :mod:`.kernel_code`) with
identities that hold for every real input, bottom up:

==============================================  ============================================
written                                         written instead
==============================================  ============================================
``numpy.log(numpy.exp(a) + numpy.exp(b) ...)``  ``numpy.logaddexp(a, b)`` (nested; a positive
                                                constant term ``c`` is ``exp(log c)``)
``numpy.log(1 + u)``, ``numpy.log(1 - u)``      ``numpy.log1p(u)``, ``numpy.log1p(-u)``
``k*numpy.exp(u) - k``                          ``k*numpy.expm1(u)``
``k*math.erf(u) + k``, ``k - k*math.erf(u)``    ``k*math.erfc(-u)``, ``k*math.erfc(u)``
``k*numpy.cos(u) - k``                          ``-2*k*numpy.sin(u/2)**2``
``numpy.sqrt(a**2 + b**2 ...)``                 ``numpy.hypot(a, b)`` (nested)
==============================================  ============================================

``k`` is a numeric constant (1 when absent), the terms of a sum may come in any order and
with any others beside them. Each rewrite applied is named (``log1p``, ``logaddexp`` ...) so
the kernel's docstring and document say so. What no rule covers is left as written: the
generated kernel tests evaluate every kernel over a wide range against a high-precision
reference and fail where it loses its digits.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass

#: ``(sign, term)`` of a flattened sum: +1 or -1, and the term's node.
Term = tuple[int, ast.expr]


@dataclass(frozen=True)
class Scaled:
    """A term as ``coefficient * rest`` (``rest`` None: the term is the constant itself)."""

    coefficient: float
    rest: ast.expr | None


def stabilise(expression: ast.expr) -> tuple[ast.expr, tuple[str, ...]]:
    """``expression`` with the stable forms above, and the names of the rewrites applied."""
    rewriter = _Rewriter()
    return rewriter.visit(expression), tuple(rewriter.applied)


class _Rewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.applied: list[str] = []

    def _did(self, name: str) -> None:
        if name not in self.applied:
            self.applied.append(name)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        if _is_call(node, "numpy", "log") and len(node.args) == 1:
            return self._log(node, node.args[0])
        if _is_call(node, "numpy", "sqrt") and len(node.args) == 1:
            return self._sqrt(node, node.args[0])
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        if not isinstance(node.op, ast.Add | ast.Sub):
            return node
        terms, merged = _terms(node), False
        while (rewritten := self._pairs(terms)) is not None:
            terms, merged = rewritten, True
        return _sum(terms) if merged else node

    # -- log -----------------------------------------------------------------------------------
    def _log(self, node: ast.Call, argument: ast.expr) -> ast.expr:
        terms = _terms(argument)
        if len(terms) < 2:
            return node
        exponents = _exp_arguments(terms)
        if exponents is not None:
            self._did("logaddexp")
            result = exponents[0]
            for exponent in exponents[1:]:
                result = _call("numpy", "logaddexp", result, exponent)
            return result
        ones = [i for i, (sign, term) in enumerate(terms) if sign > 0 and _constant(term) == 1.0]
        if ones:
            rest = [t for i, t in enumerate(terms) if i != ones[0]]
            self._did("log1p")
            return _call("numpy", "log1p", _sum(rest))
        return node

    # -- sqrt ----------------------------------------------------------------------------------
    def _sqrt(self, node: ast.Call, argument: ast.expr) -> ast.expr:
        terms = _terms(argument)
        bases = [_square_base(term) for sign, term in terms if sign > 0]
        if len(terms) < 2 or len(bases) != len(terms) or any(b is None for b in bases):
            return node
        self._did("hypot")
        result: ast.expr = _call("numpy", "hypot", *(b for b in bases[:2] if b is not None))
        for base in bases[2:]:
            if base is not None:
                result = _call("numpy", "hypot", result, base)
        return result

    # -- k*f(u) and a constant ±k in one sum ---------------------------------------------------
    def _pairs(self, terms: list[Term]) -> list[Term] | None:
        """The sum with one ``k*f(u)`` and a matching constant merged, or None (no such pair)."""
        scaled = [_scaled(sign, term) for sign, term in terms]
        constants = [i for i, s in enumerate(scaled) if s.rest is None]
        for i, term in enumerate(scaled):
            if term.rest is None or not isinstance(term.rest, ast.Call) or len(term.rest.args) != 1:
                continue
            for j in constants:
                merged = self._merge(term.coefficient, term.rest, scaled[j].coefficient)
                if merged is not None:
                    kept = [t for n, t in enumerate(terms) if n not in (i, j)]
                    return [*kept, (1, merged)]
        return None

    def _merge(self, k: float, call: ast.Call, constant: float) -> ast.expr | None:
        """``k*f(u) + constant`` in a stable form, when ``f`` and ``constant`` fit a rule."""
        (u,) = call.args
        if _is_call(call, "numpy", "exp") and constant == -k:
            self._did("expm1")
            return _times(k, _call("numpy", "expm1", u))
        if _is_call(call, "math", "erf") and constant == k:
            self._did("erfc")
            return _times(k, _call("math", "erfc", ast.UnaryOp(op=ast.USub(), operand=u)))
        if _is_call(call, "math", "erf") and constant == -k:
            self._did("erfc")
            return _times(-k, _call("math", "erfc", u))
        if _is_call(call, "numpy", "cos") and constant == -k:
            self._did("sin")
            half = ast.BinOp(left=u, op=ast.Div(), right=ast.Constant(2))
            square = ast.BinOp(left=_call("numpy", "sin", half), op=ast.Pow(), right=ast.Constant(2))
            return _times(-2 * k, square)
        return None


# -- the syntax of sums, products and constants --------------------------------------------------


def _terms(node: ast.expr) -> list[Term]:
    """The signed terms of a sum (``a - b + c`` -> ``+a, -b, +c``); a non-sum is one term."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        right = _terms(node.right)
        if isinstance(node.op, ast.Sub):
            right = [(-sign, term) for sign, term in right]
        return [*_terms(node.left), *right]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _constant(node) is None:
        return [(-sign, term) for sign, term in _terms(node.operand)]
    return [(1, node)]


def _sum(terms: list[Term]) -> ast.expr:
    """The terms as one expression: ``a - b + c`` (a first negative term as ``-a``)."""
    sign, first = terms[0]
    result: ast.expr = first if sign > 0 else ast.UnaryOp(op=ast.USub(), operand=first)
    for sign, term in terms[1:]:
        result = ast.BinOp(left=result, op=ast.Add() if sign > 0 else ast.Sub(), right=term)
    return result


def _constant(node: ast.expr) -> float | None:
    """The value of a numeric constant expression (``2``, ``-0.5``, ``(1/2)``), else None."""
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and type(node.value) is not bool
    ):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _constant(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.Mult):
        left, right = _constant(node.left), _constant(node.right)
        if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
            return None
        return left / right if isinstance(node.op, ast.Div) else left * right
    return None


def _scaled(sign: int, term: ast.expr) -> Scaled:
    """A term as ``coefficient * rest``: a constant, ``c*x``, ``x*c`` or ``x``."""
    value = _constant(term)
    if value is not None:
        return Scaled(sign * value, None)
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Mult):
        for factor, other in ((term.left, term.right), (term.right, term.left)):
            value = _constant(factor)
            if value is not None:
                return Scaled(sign * value, other)
    return Scaled(float(sign), term)


def _times(k: float, node: ast.expr) -> ast.expr:
    """``k*node``, or ``node`` when ``k`` is 1 (``-node`` for -1)."""
    if k == 1.0:
        return node
    if k == -1.0:
        return ast.UnaryOp(op=ast.USub(), operand=node)
    return ast.BinOp(left=_number(k), op=ast.Mult(), right=node)


def _number(value: float) -> ast.expr:
    """A literal for ``value`` (an integer when it is one); negative ones as ``-(x)``."""
    literal: ast.expr = ast.Constant(int(value) if value.is_integer() else value)
    if value < 0:
        literal = ast.UnaryOp(op=ast.USub(), operand=_number(-value))
    return literal


def _is_call(node: ast.expr, module: str, name: str) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module
        and node.func.attr == name
        and not node.keywords
    )


def _call(module: str, name: str, *args: ast.expr) -> ast.Call:
    func = ast.Attribute(value=ast.Name(id=module, ctx=ast.Load()), attr=name, ctx=ast.Load())
    return ast.Call(func=func, args=list(args), keywords=[])


def _exp_arguments(terms: list[Term]) -> list[ast.expr] | None:
    """``[a, b, ...]`` when every term is ``numpy.exp(a)`` or a positive constant ``c`` (``log c``)."""
    found: list[ast.expr] = []
    exps = 0
    for sign, term in terms:
        value = _constant(term)
        if sign > 0 and value is not None and value > 0:
            found.append(_number(math.log(value)))
        elif sign > 0 and isinstance(term, ast.Call) and _is_call(term, "numpy", "exp") and term.args:
            found.append(term.args[0])
            exps += 1
        else:
            return None
    return found if exps else None


def _square_base(term: ast.expr) -> ast.expr | None:
    """``a`` of ``a**2``, else None."""
    if isinstance(term, ast.BinOp) and isinstance(term.op, ast.Pow) and _constant(term.right) == 2.0:
        return term.left
    return None


__all__ = ["stabilise"]
