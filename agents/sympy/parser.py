"""The safe parser: untrusted text -> SymPy expression, never through ``eval``.

The text is read by ``ast.parse(mode="eval")`` (which only builds a tree, it
runs nothing) and the tree is walked against a whitelist: numbers, names
(which become Symbols), ``+ - * / **``, unary signs, one comparison, calls of
the functions in :mod:`.grammar`, and ``Matrix([[...], ...])``. SymPy objects
are built node by node, so ``sympify`` / ``parse_expr`` never see user text.

Sizes are checked *before* SymPy computes anything that could explode: input
length, node count, nesting depth, numeric exponents, guarded function
arguments and the digits of every integer. A refusal is a
:class:`ParseRejected` naming the rule and the position.
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import sympy

from agents.contracts.sympy.errors import Kind, ParseRejected, Position
from agents.contracts.sympy.payloads import EXPR_MAX

from .grammar import CONSTANTS, DANGEROUS_NAMES, FUNCTIONS, MATRIX, Function

_LOG10_2 = math.log10(2)
_NEWLINE = re.compile(r"\r\n|\r|\n")
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: sympy.Eq,
    ast.NotEq: sympy.Ne,
    ast.Lt: sympy.Lt,
    ast.LtE: sympy.Le,
    ast.Gt: sympy.Gt,
    ast.GtE: sympy.Ge,
}
_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)


@dataclass(frozen=True)
class ParserLimits:
    """Bounds on what one expression may ask of SymPy (settings ``L9_SYMPY_MAX_*``)."""

    #: The wire refuses longer fields (``payloads.EXPR_MAX``): a larger setting changes nothing.
    max_chars: int = EXPR_MAX
    max_nodes: int = 2000
    max_depth: int = 60
    max_exponent: int = 1000
    max_factorial: int = 1000
    max_integer_digits: int = 1000
    max_name_length: int = 64
    max_matrix_entries: int = 400


def parse(text: str, limits: ParserLimits | None = None) -> Any:
    """The SymPy expression ``text`` denotes; ParseRejected for anything outside the grammar."""
    return _Builder(text, limits or ParserLimits()).build()


def canonical_hash(*exprs: Any) -> str:
    """Hash of the canonical form: SymPy orders arguments itself, so ``x+y`` and ``y+x`` agree."""
    digest = hashlib.sha256()
    for expr in exprs:
        digest.update(sympy.srepr(expr).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def digits(value: int) -> int:
    """Decimal digits of ``abs(value)``, estimated from its bit length (never converts to str)."""
    return int(abs(value).bit_length() * _LOG10_2) + 1


class _Builder:
    def __init__(self, text: str, limits: ParserLimits) -> None:
        self.text, self.limits = text, limits
        self.line_starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]

    # -- entry ---------------------------------------------------------------------------
    def build(self) -> Any:
        if len(self.text) > self.limits.max_chars:
            at = self._at_offset(self.limits.max_chars)
            self._limit("max_length", f"input longer than {self.limits.max_chars} characters", at)
        if "\0" in self.text:
            self._reject("syntax", "syntax", "null byte in the input", self._at_offset(self.text.index("\0")))
        tree = self._syntax_tree()
        self._check_node_count(tree)
        self._check_names(tree)
        try:
            result = self._build(tree.body, 1)
        except RecursionError:
            self._limit("max_depth", "the expression is nested too deeply", tree)
        if isinstance(result, sympy.MatrixBase) or not isinstance(result, sympy.Basic):
            self._invalid("not_scalar", "the expression must be a scalar (use det(Matrix(...)))", tree)
        return result

    def _syntax_tree(self) -> ast.Expression:
        try:
            with warnings.catch_warnings():
                # "invalid decimal literal", "invalid escape sequence" (a DeprecationWarning on 3.11)
                warnings.simplefilter("ignore", SyntaxWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                return ast.parse(self.text, mode="eval")
        except SyntaxError as exc:
            if not exc.offset:  # Python reports an unexpected end of input at offset 0
                self._reject("syntax", "syntax", exc.msg, self._at_offset(len(self.text)))
            line, col = exc.lineno or 1, exc.offset
            self._reject("syntax", "syntax", exc.msg, Position(line, col, self._offset(line, col - 1)))
        except (RecursionError, MemoryError):
            self._limit("max_depth", "the expression is nested too deeply", self._at_offset(0))
        except ValueError as exc:  # lone surrogates
            self._reject("syntax", "syntax", str(exc), self._at_offset(0))

    def _check_node_count(self, tree: ast.Expression) -> None:
        count = 0
        for node in ast.walk(tree):
            if isinstance(node, ast.expr):
                count += 1
                if count > self.limits.max_nodes:
                    self._limit("max_nodes", f"more than {self.limits.max_nodes} nodes", node)

    def _check_names(self, tree: ast.Expression) -> None:
        """The first forbidden name or attribute in reading order, before anything is built.

        ``__import__('os').system('id')`` is reported as ``__import__``, not as the
        attribute access the walk would meet first.
        """
        found: list[tuple[int, str, Position]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and _forbidden(node.id):
                at = self._at(node)
                found.append((at.offset, node.id, at))
            elif isinstance(node, ast.Attribute) and _forbidden(node.attr):
                at = self._attr_at(node)
                found.append((at.offset, node.attr, at))
        if found:
            _, name, at = min(found, key=lambda item: item[0])
            self._forbid("forbidden_name", f"{name} is not allowed", at)

    # -- the walk ------------------------------------------------------------------------
    def _build(self, node: ast.expr, depth: int) -> Any:
        if depth > self.limits.max_depth:
            self._limit("max_depth", f"nested deeper than {self.limits.max_depth} levels", node)
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            return self._binop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self._unary(node, depth)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        if isinstance(node, ast.Compare):
            return self._compare(node, depth)
        return self._forbidden_node(node)

    def _forbidden_node(self, node: ast.expr) -> NoReturn:
        if isinstance(node, ast.Attribute):
            self._forbid("forbidden_attribute", f"attribute access .{node.attr} is not allowed", node)
        if isinstance(node, ast.JoinedStr):
            self._forbid("forbidden_literal", "f-strings are not allowed", node)
        what = type(node).__name__
        self._forbid("forbidden_syntax", f"{what} is not allowed in an expression", node)

    def _constant(self, node: ast.Constant) -> Any:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float | complex):
            self._forbid("forbidden_literal", f"literal {type(value).__name__} is not allowed", node)
        if isinstance(value, int):
            self._check_digits(value, node)
            return sympy.Integer(value)
        if isinstance(value, float):
            return self._float(value, node)
        return self._float(value.real, node) + self._float(value.imag, node) * sympy.I

    def _float(self, value: float, node: ast.expr) -> Any:
        if not math.isfinite(value):
            self._limit("float_range", "the number is out of the floating-point range", node)
        return sympy.Float(repr(value))  # the shortest decimal that round-trips: 0.1 stays 0.1

    def _name(self, node: ast.Name) -> Any:
        name = node.id
        if name in CONSTANTS:
            return CONSTANTS[name]
        self._check_name(name, node)
        if name in FUNCTIONS or name == MATRIX:
            self._invalid("function_without_call", f"{name} is a function: call it, {name}(...)", node)
        return sympy.Symbol(name)

    def _check_name(self, name: str, node: ast.expr) -> None:
        if _forbidden(name):
            self._forbid("forbidden_name", f"{name} is not allowed", node)
        if len(name) > self.limits.max_name_length:
            self._limit("max_name_length", f"name longer than {self.limits.max_name_length}", node)

    def _binop(self, node: ast.BinOp, depth: int) -> Any:
        if not isinstance(node.op, _ARITH):
            hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
            self._forbid("forbidden_syntax", f"operator {_op_text(node.op)} is not allowed{hint}", node)
        if isinstance(node.op, ast.Pow):
            return self._power(node, depth)
        group: tuple[type[ast.operator], ...] = (
            (ast.Add, ast.Sub) if isinstance(node.op, ast.Add | ast.Sub) else (ast.Mult, ast.Div)
        )
        chain = _flatten(node, group)  # a long sum or product is one level, not one per term
        operands = [self._build(operand, depth + 1) for _, operand in chain]
        ops = [op for op, _ in chain]
        return self._checked(node, lambda: _fold(ops, operands))

    def _power(self, node: ast.BinOp, depth: int) -> Any:
        base, exponent = self._build(node.left, depth + 1), self._build(node.right, depth + 1)
        if isinstance(exponent, sympy.Number):
            if abs(exponent) > self.limits.max_exponent:
                limit = self.limits.max_exponent
                self._limit("max_exponent", f"exponent {exponent} exceeds {limit}", node.right)
            if isinstance(base, sympy.Rational) and isinstance(exponent, sympy.Integer):
                size = abs(int(exponent)) * max(_log10(int(base.p)), _log10(int(base.q)))
                if size >= self.limits.max_integer_digits:
                    limit = self.limits.max_integer_digits
                    self._limit("max_integer_digits", f"about {size:.0f} digits exceeds {limit}", node)
        return self._checked(node, lambda: base**exponent)

    def _unary(self, node: ast.UnaryOp, depth: int) -> Any:
        if not isinstance(node.op, ast.UAdd | ast.USub):
            self._forbid("forbidden_syntax", f"operator {_op_text(node.op)} is not allowed", node)
        operand = self._build(node.operand, depth + 1)
        return self._checked(node, lambda: -operand if isinstance(node.op, ast.USub) else operand)

    def _compare(self, node: ast.Compare, depth: int) -> Any:
        if len(node.ops) != 1:
            self._forbid("forbidden_syntax", "chained comparisons are not allowed", node)
        build = _COMPARE.get(type(node.ops[0]))
        if build is None:
            self._forbid("forbidden_syntax", f"operator {_op_text(node.ops[0])} is not allowed", node)
        left, right = self._build(node.left, depth + 1), self._build(node.comparators[0], depth + 1)
        return self._checked(node, lambda: build(left, right))

    def _call(self, node: ast.Call, depth: int) -> Any:
        if not isinstance(node.func, ast.Name):
            return self._build_callee(node.func, depth)
        name = node.func.id
        self._check_name(name, node.func)
        if node.keywords:
            self._forbid("forbidden_syntax", f"keyword arguments to {name}() are not allowed", node)
        if name == MATRIX:
            return self._matrix(node, depth)
        function = FUNCTIONS.get(name)
        if function is None:
            self._forbid("unknown_function", f"{name}() is not a whitelisted function", node.func)
        self._check_arity(name, function, node)
        args = [self._build(arg, depth + 1) for arg in node.args]
        if function.guarded:
            self._guard(name, args, node)
        return self._checked(node, lambda: function.build(*args))

    def _build_callee(self, func: ast.expr, depth: int) -> NoReturn:
        self._build(func, depth + 1)  # rejects attributes, subscripts, lambdas... with their own rule
        self._forbid("forbidden_syntax", "only named functions can be called", func)

    def _check_arity(self, name: str, function: Function, node: ast.Call) -> None:
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            self._forbid("forbidden_syntax", "starred arguments are not allowed", node)
        n, lo, hi = len(node.args), function.min_args, function.max_args
        if not lo <= n <= hi:
            wanted = str(lo) if lo == hi else f"{lo} to {hi}"
            self._invalid("arity", f"{name}() takes {wanted} arguments, got {n}", node)

    def _guard(self, name: str, args: Sequence[Any], node: ast.Call) -> None:
        for arg in args:
            if isinstance(arg, sympy.Number) and abs(arg) > self.limits.max_factorial:
                limit = self.limits.max_factorial
                self._limit("max_factorial", f"{name}() of {arg} exceeds {limit}", node)

    def _matrix(self, node: ast.Call, depth: int) -> Any:
        rows = node.args[0] if len(node.args) == 1 else None
        if not isinstance(rows, ast.List) or not all(isinstance(r, ast.List) for r in rows.elts):
            self._invalid("matrix", "Matrix() takes one list of row lists", node)
        cells = [row.elts for row in rows.elts if isinstance(row, ast.List)]
        if sum(len(row) for row in cells) > self.limits.max_matrix_entries:
            limit = self.limits.max_matrix_entries
            self._limit("max_matrix_entries", f"more than {limit} matrix entries", node)
        built = [[self._build(cell, depth + 2) for cell in row] for row in cells]
        return self._checked(node, lambda: sympy.ImmutableMatrix(built))

    # -- checks and errors ---------------------------------------------------------------
    def _checked(self, node: ast.expr, make: Callable[[], Any]) -> Any:
        """Run one SymPy constructor; its errors become ``invalid``, its integers are size-checked."""
        try:
            value = make()
        except ParseRejected:
            raise
        except RecursionError:
            self._limit("max_depth", "the expression is nested too deeply", node)
        except (MemoryError, SystemError):  # out of memory (in C, a SystemError): the pool's to handle
            raise
        except Exception as exc:
            self._invalid("invalid_operation", f"{type(exc).__name__}: {exc}", node)
        if isinstance(value, sympy.Rational):
            self._check_digits(int(value.p), node)
            self._check_digits(int(value.q), node)
        return value

    def _check_digits(self, value: int, node: ast.expr) -> None:
        if digits(value) > self.limits.max_integer_digits:
            limit = self.limits.max_integer_digits
            self._limit("max_integer_digits", f"an integer of more than {limit} digits", node)

    def _forbid(self, rule: str, detail: str, where: ast.AST | Position) -> NoReturn:
        self._reject("forbidden", rule, detail, where)

    def _limit(self, rule: str, detail: str, where: ast.AST | Position) -> NoReturn:
        self._reject("limit", rule, detail, where)

    def _invalid(self, rule: str, detail: str, where: ast.AST | Position) -> NoReturn:
        self._reject("invalid", rule, detail, where)

    def _reject(self, kind: Kind, rule: str, detail: str, where: ast.AST | Position) -> NoReturn:
        raise ParseRejected(kind, rule, detail, where if isinstance(where, Position) else self._at(where))

    def _at(self, node: ast.AST) -> Position:
        return self._position(getattr(node, "lineno", 1), getattr(node, "col_offset", 0))

    def _attr_at(self, node: ast.Attribute) -> Position:
        """Where the attribute name itself starts (``x.__class__`` -> the ``_``)."""
        end_line, end_col = node.end_lineno or node.lineno, node.end_col_offset or node.col_offset
        return self._position(end_line, max(end_col - len(node.attr.encode()), 0))

    def _position(self, line: int, byte_col: int) -> Position:
        """ast columns count UTF-8 bytes; positions count characters."""
        start = self.line_starts[min(max(line, 1), len(self.line_starts)) - 1]
        prefix = self.text[start:].encode("utf-8", "surrogatepass")[:byte_col]
        col = len(prefix.decode("utf-8", "ignore"))
        return Position(line, col + 1, start + col)

    def _at_offset(self, offset: int) -> Position:
        line = sum(1 for start in self.line_starts if start <= offset)
        return Position(line, offset - self.line_starts[line - 1] + 1, offset)

    def _offset(self, line: int, col0: int) -> int:
        start = self.line_starts[min(max(line, 1), len(self.line_starts)) - 1]
        return min(start + col0, len(self.text))


def _log10(value: int) -> float:
    return math.log10(abs(value)) if value else 0.0


def _forbidden(name: str) -> bool:
    return name in DANGEROUS_NAMES or name.startswith("_")


_Chain = list[tuple[ast.operator, ast.expr]]


def _flatten(node: ast.BinOp, group: tuple[type[ast.operator], ...]) -> _Chain:
    """``a - b + c`` -> [(Add, a), (Sub, b), (Add, c)], iteratively (no recursion per term)."""
    chain: _Chain = []
    current: ast.expr = node
    while isinstance(current, ast.BinOp) and isinstance(current.op, group):
        chain.append((current.op, current.right))
        current = current.left
    chain.append((group[0](), current))
    chain.reverse()
    return chain


def _fold(ops: list[ast.operator], operands: list[Any]) -> Any:
    if any(isinstance(x, sympy.MatrixBase) for x in operands):
        acc = operands[0]
        for op, x in zip(ops[1:], operands[1:], strict=True):
            acc = _MATRIX_OPS[type(op)](acc, x)
        return acc
    if isinstance(ops[0], ast.Add):
        return sympy.Add(*[-x if isinstance(op, ast.Sub) else x for op, x in zip(ops, operands, strict=True)])
    return sympy.Mul(*[1 / x if isinstance(op, ast.Div) else x for op, x in zip(ops, operands, strict=True)])


_MATRIX_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _op_text(op: ast.AST) -> str:
    symbols = {
        ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
        ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.Not: "not", ast.Invert: "~",
        ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
    }  # fmt: skip
    return symbols.get(type(op), type(op).__name__)
