"""Conditions and computed values of rules: checked text -> Python code and a callable.

``compile_condition("risk > 0.8 and not late", ["risk", "late"])`` reads the text with
the SymPy worker's safe parser (:func:`agents.sympy.parser.parse`: a whitelist walk of the
syntax tree, never ``eval``; forbidden names such as ``__import__``, attribute access,
lambdas and strings are refused with their position), checks that it names only the given
values, and prints it with SymPy's Python code printer::

    cond = compile_condition("Abs(x - y) <= 1e-3 or count >= 5", ["x", "y", "count"])
    cond.source   # '(abs(x - y) <= 0.001) or (count >= 5)'
    cond.names    # ('count', 'x', 'y')
    cond({"x": 1.0, "y": 1.0005, "count": 0})   # True

The grammar: relations (``< <= > >= == !=``, ``Eq(a, b)``...) between arithmetic
expressions of the parser's whitelist (``+ - * / **``, ``Abs``, ``exp``, ``log``, ``Min``,
``Max``...), combined with ``and``, ``or``, ``not`` and parentheses; a bare name is a flag,
true when its value is not 0 (``count >= 5 or late``). ``and``/``or`` are read here, the
relations by the safe parser (its grammar has no ``and``), each leaf of the boolean
structure separately, positions reported in the whole text.

``source`` is a Python expression over the value names and the ``math`` module (``import
math`` beside it), deterministic (the same text gives the same bytes, in any process), for
a code generator to paste; the boolean structure keeps the text's order, so ``x > 0 and
log(x) > 1`` never evaluates ``log`` of a negative ``x``. The callable runs exactly that
code: each relation is compiled by ``sympy.lambdify`` with the ``math`` module, which
builds its function from the printer's text of the *parsed and checked* expression (SymPy
objects built node by node by the safe parser, names checked against the given ones), never
from the user's text. Values are taken as real floats (``re(x)`` is ``x``); a function
with no Python ``math`` form (``arg``) is refused when compiled.

``compile_value`` does the same for a number (a computed value; chained values are a value
whose names include another's). Every error is a :class:`RuleError` with ``where`` (the
caller's label for the text, with ``line:col`` when a place in it is at fault) and a message.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sympy
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanAtom, BooleanFunction
from sympy.printing.pycode import PythonCodePrinter
from sympy.utilities.lambdify import lambdify

from agents.contracts.sympy.errors import ParseRejected, Position
from agents.sympy.grammar import CONSTANTS, DANGEROUS_NAMES, FUNCTIONS, MATRIX
from agents.sympy.parser import ParserLimits, parse

from .errors import RuleError

#: A value's name: a Python identifier the parser takes as a symbol.
VALUE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
#: Names the printed code uses itself (``math.exp``, ``abs``, ``min``, ``max``).
PRINTER_NAMES = frozenset({"math", "abs", "min", "max"})
_NEWLINE = re.compile(r"\r\n|\r|\n")
#: What SymPy builds for a condition (a Symbol is a Boolean too: not listed).
_CONDITIONS = (Relational, BooleanAtom, BooleanFunction)


class _Printer(PythonCodePrinter):  # type: ignore[misc]  # SymPy is untyped
    """SymPy's Python printer (``math.`` functions), a float as its shortest round-trip text."""

    def _print_Float(self, expr: Any) -> str:
        return repr(float(expr))


def _printer() -> _Printer:
    return _Printer({"fully_qualified_modules": True, "strict": True})


# -- the compiled forms --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Leaf:
    """One relation (or flag) of a condition, or a whole value: its code and function."""

    expr: Any
    names: tuple[str, ...]
    source: str
    function: Callable[..., Any]

    def run(self, text: str, where: str, values: Mapping[str, Any]) -> Any:
        args = [_number(where, name, values) for name in self.names]
        try:
            return self.function(*args)
        except (ArithmeticError, ValueError, TypeError) as exc:
            shown = ", ".join(f"{n}={a!r}" for n, a in zip(self.names, args, strict=True))
            raise RuleError(where, f"{text!r} cannot be evaluated at {shown or 'no values'}: {exc}") from None


@dataclass(frozen=True)
class _Bool:
    """``and`` / ``or`` of parts in the text's order, or ``not`` of one part."""

    op: Literal["and", "or", "not"]
    parts: tuple[_Leaf | _Bool, ...]

    @property
    def source(self) -> str:
        texts = [p.source if isinstance(p, _Leaf) else f"({p.source})" for p in self.parts]
        return f"not {texts[0]}" if self.op == "not" else f" {self.op} ".join(texts)

    @property
    def expr(self) -> Any:
        exprs = [p.expr for p in self.parts]
        return {"and": sympy.And, "or": sympy.Or, "not": sympy.Not}[self.op](*exprs)

    def test(self, text: str, where: str, values: Mapping[str, Any]) -> bool:
        if self.op == "not":
            return not _test(self.parts[0], text, where, values)
        if self.op == "and":
            return all(_test(p, text, where, values) for p in self.parts)
        return any(_test(p, text, where, values) for p in self.parts)


def _test(node: _Leaf | _Bool, text: str, where: str, values: Mapping[str, Any]) -> bool:
    if isinstance(node, _Bool):
        return node.test(text, where, values)
    return bool(node.run(text, where, values))


@dataclass(frozen=True)
class Condition:
    """A compiled condition: call it with a mapping of the values it names."""

    text: str
    #: The value names it reads, sorted.
    names: tuple[str, ...]
    #: The Python expression (over ``names`` and ``math``) it evaluates.
    source: str
    #: SymPy's reading of it (real symbols), what its evaluation agrees with.
    expr: Any = field(repr=False, compare=False)
    where: str = field(repr=False, compare=False)
    _root: _Leaf | _Bool = field(repr=False, compare=False)

    def __call__(self, values: Mapping[str, Any]) -> bool:
        """True when the condition holds; RuleError for a missing or non-finite value, or an
        evaluation that fails (``log`` of a negative number)."""
        return _test(self._root, self.text, self.where, values)


@dataclass(frozen=True)
class Value:
    """A compiled numeric expression: call it with a mapping of the values it names."""

    text: str
    names: tuple[str, ...]
    source: str
    expr: Any = field(repr=False, compare=False)
    where: str = field(repr=False, compare=False)
    _leaf: _Leaf = field(repr=False, compare=False)

    def __call__(self, values: Mapping[str, Any]) -> float:
        """The value as a finite float; RuleError otherwise (a complex or infinite result too)."""
        result = self._leaf.run(self.text, self.where, values)
        if isinstance(result, complex):
            raise RuleError(self.where, f"{self.text!r} is complex here ({result!r})")
        number = float(result)
        if not math.isfinite(number):
            raise RuleError(self.where, f"{self.text!r} is {number!r} here: not a finite number")
        return number


# -- the entry points ----------------------------------------------------------------------------
def compile_condition(
    text: str, names: Sequence[str], *, where: str = "condition", limits: ParserLimits | None = None
) -> Condition:
    """The condition ``text`` over the values ``names`` (see the module docstring)."""
    reader = _Reader(text, where, check_value_names(where, names), limits or ParserLimits())
    root = reader.condition(reader.tree().body, 1)
    return Condition(text, tuple(sorted(reader.used)), root.source, root.expr, where, root)


def compile_value(
    text: str, names: Sequence[str], *, where: str = "value", limits: ParserLimits | None = None
) -> Value:
    """The numeric expression ``text`` over the values ``names`` (see the module docstring)."""
    reader = _Reader(text, where, check_value_names(where, names), limits or ParserLimits())
    node = reader.tree().body
    expr = reader.leaf_expr(node)
    if isinstance(expr, _CONDITIONS):
        raise RuleError(where, f"{text!r} is a condition, not a value")
    if expr.has(sympy.zoo, sympy.nan):
        raise RuleError(where, f"{text!r} is undefined (a division by zero?)")
    if expr.has(sympy.oo, -sympy.oo):
        raise RuleError(where, f"{text!r} is infinite")
    if expr.has(sympy.I):
        raise RuleError(where, f"{text!r} is complex")
    leaf = reader.compile(expr, node)
    return Value(text, tuple(sorted(reader.used)), leaf.source, expr, where, leaf)


def check_value_names(where: str, names: Sequence[str]) -> frozenset[str]:
    """``names`` as a set, once each is a name a value may have (not a function, a constant, a
    Python keyword or a name the printed code uses)."""
    if isinstance(names, str):
        raise RuleError(where, f"names must be a list of names, not the text {names!r}")
    for name in names:
        reason = _reserved(name)
        if reason:
            raise RuleError(where, f"{name!r} cannot name a value: {reason}")
    return frozenset(names)


def _reserved(name: object) -> str:
    if not isinstance(name, str) or not VALUE_NAME.match(name):
        return "want a letter, then letters, digits or _ (at most 64)"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "a Python keyword"
    if name in CONSTANTS:
        return "a constant of the expression grammar"
    if name in FUNCTIONS or name == MATRIX:
        return "a function of the expression grammar"
    if name in DANGEROUS_NAMES:
        return "refused by the safe parser"
    if name in PRINTER_NAMES:
        return "used by the generated code"
    return ""


def _number(where: str, name: str, values: Mapping[str, Any]) -> float:
    if name not in values:
        raise RuleError(where, f"no value for {name!r}")
    value = values[name]
    if not isinstance(value, int | float):  # a bool is an int: a flag is 0 or 1
        raise RuleError(where, f"{name} is {type(value).__name__} {value!r:.40}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise RuleError(where, f"{name} is an integer too large for a float") from None
    if not math.isfinite(number):
        raise RuleError(where, f"{name} is {number!r}: values must be finite numbers")
    return number


# -- reading the text ----------------------------------------------------------------------------
class _Reader:
    """One text: its syntax tree, the boolean structure, each leaf through the safe parser."""

    def __init__(self, text: str, where: str, known: frozenset[str], limits: ParserLimits) -> None:
        if not isinstance(text, str):
            raise RuleError(where, f"expected the text of an expression, got {type(text).__name__}")
        self.text, self.where, self.known, self.limits = text, where, known, limits
        self.line_starts = [0] + [m.end() for m in _NEWLINE.finditer(text)]
        #: The value names the text reads.
        self.used: set[str] = set()

    def tree(self) -> ast.Expression:
        """The whole text's syntax tree (nothing runs); the safe parser's own error when the text
        is no expression, too long or nested too deep."""
        if len(self.text) > self.limits.max_chars or "\0" in self.text or not self.text.strip():
            self._parse(self.text, Position(1, 1, 0))
        try:
            return ast.parse(self.text, mode="eval")
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            self._parse(self.text, Position(1, 1, 0))
        raise RuleError(self.where, "not an expression")  # the parser took what Python refused

    def condition(self, node: ast.expr, depth: int) -> _Leaf | _Bool:
        if depth > self.limits.max_depth:
            raise RuleError(self._where(node), f"nested deeper than {self.limits.max_depth} levels")
        if isinstance(node, ast.BoolOp):
            op: Literal["and", "or"] = "and" if isinstance(node.op, ast.And) else "or"
            return _Bool(op, tuple(self.condition(v, depth + 1) for v in node.values))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return _Bool("not", (self.condition(node.operand, depth + 1),))
        return self.relation(node)

    def relation(self, node: ast.expr) -> _Leaf:
        expr = self.leaf_expr(node)
        if isinstance(expr, sympy.Symbol):
            expr = sympy.Ne(expr, 0)  # a flag: true when not 0
        elif not isinstance(expr, _CONDITIONS):
            shown = self._segment(node)
            raise RuleError(
                self._where(node), f"{shown!r} is a number, not a condition: compare it ({shown} > 0)"
            )
        if expr.has(sympy.zoo, sympy.nan):
            raise RuleError(self._where(node), f"{self._segment(node)!r} is undefined (a division by zero?)")
        return self.compile(expr, node)

    def leaf_expr(self, node: ast.expr) -> Any:
        """The SymPy expression of ``node`` (safe parser), over real symbols of known names."""
        segment, start = self._segment(node), self._start(node)
        if "\n" in segment or "\r" in segment:  # a relation broken over lines, inside parentheses
            expr = self._parse(f"({segment})", Position(start.line, start.col - 1, start.offset - 1))
        else:
            expr = self._parse(segment, start)
        names = {s.name for s in expr.free_symbols}
        unknown = names - self.known
        if unknown:
            self._unknown(node, unknown)
        self.used |= names
        return expr.xreplace({sympy.Symbol(n): sympy.Symbol(n, real=True) for n in names})

    def compile(self, expr: Any, node: ast.expr) -> _Leaf:
        symbols = sorted(expr.free_symbols, key=lambda s: s.name)
        try:
            source = _printer().doprint(expr)
            function = lambdify(
                symbols, expr, modules=[{"math": math}, "math"], printer=_printer(), docstring_limit=0
            )
        except Exception as exc:  # the printer's refusal of a function it has no form for
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            what = first.rpartition(": ")[2] if first.startswith("Unsupported by") else first
            raise RuleError(self._where(node), f"{what} has no Python (math module) form") from None
        return _Leaf(expr, tuple(s.name for s in symbols), source, function)

    # -- positions and errors --------------------------------------------------------------------
    def _parse(self, segment: str, start: Position) -> Any:
        try:
            return parse(segment, self.limits)
        except ParseRejected as exc:
            at = exc.position or Position(1, 1, 0)
            col = at.col + start.col - 1 if at.line == 1 else at.col
            where = Position(start.line + at.line - 1, col, start.offset + at.offset)
            raise RuleError(f"{self.where}:{where}", f"{exc.rule}: {exc.detail}") from None

    def _unknown(self, node: ast.expr, unknown: set[str]) -> None:
        found = sorted(
            ((self._start(n), n.id) for n in _names(node) if n.id in unknown), key=lambda f: f[0].offset
        )
        listed = ", ".join(f"{name} at {at}" for at, name in found)
        known = ", ".join(sorted(self.known)) or "none"
        first = found[0][0] if found else self._start(node)
        raise RuleError(f"{self.where}:{first}", f"unknown name(s) {listed} (known: {known})")

    def _segment(self, node: ast.expr) -> str:
        return ast.get_source_segment(self.text, node) or ""

    def _start(self, node: ast.expr) -> Position:
        """Where ``node`` starts (ast columns count UTF-8 bytes; positions count characters)."""
        line = min(max(node.lineno, 1), len(self.line_starts))
        start = self.line_starts[line - 1]
        prefix = self.text[start:].encode("utf-8", "surrogatepass")[: node.col_offset]
        col = len(prefix.decode("utf-8", "ignore"))
        return Position(line, col + 1, start + col)

    def _where(self, node: ast.expr) -> str:
        return f"{self.where}:{self._start(node)}"


def _names(node: ast.expr) -> Iterator[ast.Name]:
    """The names of ``node`` that are read as values (not those called as functions)."""
    called = {id(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and id(n) not in called:
            yield n
