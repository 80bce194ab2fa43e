"""A kernel's Python code as the SymPy worker wrote it, checked and turned into statements.

The worker answers ``generate_code(formula, "python", cse=True)`` with a small
module: ``import numpy`` and one function whose body is common-subexpression
temporaries (``t0 = ...``) and a ``return``. That text came over the bus, so it
is parsed (``ast.parse``, which runs nothing) and held to a whitelist before
any of it is written into a generated module: numbers, the function's
parameters and temporaries, arithmetic, comparisons, calls of ``numpy.*``,
``abs``, ``math.*`` and ``functools.reduce``. Anything else (another name, a
string, a complex constant, a statement that is not an assignment) is a
:class:`KernelCodeError` naming the kernel.

Where floating point would overflow or cancel while the true value is finite
(``log(exp(x) + exp(y))``, ``(1 + erf(x))/2``), the checked code is rewritten into a
stable form (:mod:`.stable`); :attr:`KernelCode.stable` names the rewrites.

``math.f(...)`` works on one number only: the worker writes it as
``numpy.vectorize(math.f, otypes=[float])(...)`` so the kernel takes arrays; that
form is checked as ``math.f(...)`` and written the same way (a bare ``math.f(...)``
is wrapped too).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from agents.contracts.sympy.codegen import ARRAY_CALL

from .stable import stabilise

#: Modules the worker's code may use, and the names a kernel module imports for them.
MODULES = ("functools", "math", "numpy")
_BUILTINS = frozenset({"abs"})
_EXPRESSION_NODES = (
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.Attribute,
    ast.Name,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.IfExp,
    ast.keyword,
    ast.expr_context,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)


class KernelCodeError(ValueError):
    """The worker's code for a kernel is not plain numeric code."""


@dataclass(frozen=True)
class KernelSource:
    """The SymPy worker's answer for one kernel (a ``GenerateCodeResult``) and its formula."""

    name: str
    formula: str
    #: Symbol names, in parameter order (sorted by name).
    args: tuple[str, ...]
    #: The parameter names the code uses (a symbol Python cannot spell is renamed).
    params: tuple[str, ...]
    source: str
    ops_before: int
    ops_after: int
    expr_hash: str


@dataclass(frozen=True)
class KernelCode:
    """A checked kernel: its statements as Python source, ready for a template."""

    name: str
    formula: str
    args: tuple[str, ...]
    params: tuple[str, ...]
    #: ``(temporary, expression)`` in order, then the returned expression.
    temporaries: tuple[tuple[str, str], ...]
    result: str
    #: The modules the statements use besides ``numpy`` (``math``, ``functools``).
    modules: tuple[str, ...]
    ops_before: int
    ops_after: int
    expr_hash: str
    #: The stable forms written instead of the worker's code (``log1p``, ``logaddexp``: :mod:`.stable`).
    stable: tuple[str, ...] = ()

    @property
    def arguments(self) -> tuple[tuple[str, str], ...]:
        """``(symbol, parameter)`` pairs in order."""
        return tuple(zip(self.args, self.params, strict=True))


def kernel_code(source: KernelSource) -> KernelCode:
    """Check the worker's code for ``source`` and cut it into statements (KernelCodeError if unfit)."""
    func = _function(source)
    names = set(source.params) | _BUILTINS | set(MODULES)
    body = [s for s in func.body if not _is_docstring(s)]
    if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
        raise _error(source, "the function does not end with a return of a value")
    temporaries: list[tuple[str, str]] = []
    used: set[str] = set()
    stable: list[str] = []
    for statement in body[:-1]:
        target, value = _assignment(source, statement)
        value = _Unvectorise().visit(value)
        used |= _check(source, value, names)
        temporaries.append((target, _stable_text(value, stable)))
        names.add(target)
    result = _Unvectorise().visit(body[-1].value)
    used |= _check(source, result, names)
    result_text = _stable_text(result, stable)
    return KernelCode(
        name=source.name,
        formula=source.formula,
        args=source.args,
        params=source.params,
        temporaries=tuple(temporaries),
        result=result_text,
        modules=tuple(m for m in MODULES if m in used and m != "numpy"),
        ops_before=source.ops_before,
        ops_after=source.ops_after,
        expr_hash=source.expr_hash,
        stable=tuple(stable),
    )


def _stable_text(expression: ast.expr, applied: list[str]) -> str:
    """The statement's text with the stable forms of :mod:`.stable` (their names added to ``applied``)."""
    rewritten, names = stabilise(expression)
    applied.extend(n for n in names if n not in applied)
    return _text(rewritten)


def _error(source: KernelSource, what: str) -> KernelCodeError:
    return KernelCodeError(f"kernel '{source.name}' ({source.formula}): the SymPy tool's code: {what}")


def _function(source: KernelSource) -> ast.FunctionDef:
    try:
        tree = ast.parse(source.source)
    except SyntaxError as exc:
        raise _error(source, f"not Python ({exc.msg}, line {exc.lineno})") from None
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    others = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.Import)]
    if len(funcs) != 1 or others:
        raise _error(source, "expected one function and imports only")
    func = funcs[0]
    params = tuple(a.arg for a in func.args.args)
    extra = func.args.vararg or func.args.kwarg or func.args.kwonlyargs or func.args.posonlyargs
    if params != source.params or extra or func.args.defaults or func.decorator_list:
        raise _error(source, f"parameters {params} differ from {source.params}")
    if len(source.args) != len(source.params):
        raise _error(source, f"{len(source.args)} symbols for {len(source.params)} parameters")
    return func


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _assignment(source: KernelSource, statement: ast.stmt) -> tuple[str, ast.expr]:
    if (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return statement.targets[0].id, statement.value
    raise _error(source, f"line {statement.lineno} is not an assignment to one temporary")


def _check(source: KernelSource, expression: ast.expr, names: set[str]) -> set[str]:
    """The module names ``expression`` uses; KernelCodeError for anything off the whitelist."""
    used: set[str] = set()
    for node in ast.walk(expression):
        if not isinstance(node, _EXPRESSION_NODES):
            raise _error(source, f"{type(node).__name__} is not allowed in a kernel")
        if isinstance(node, ast.Name) and node.id not in names:
            raise _error(source, f"unknown name {node.id!r}")
        if isinstance(node, ast.Name) and node.id in MODULES:
            used.add(node.id)
        if isinstance(node, ast.Attribute):
            _check_attribute(source, node)
        if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
            raise _error(source, f"constant {node.value!r}: kernels are real-valued and numeric")
    return used


def _check_attribute(source: KernelSource, node: ast.Attribute) -> None:
    owner = node.value
    if not (isinstance(owner, ast.Name) and owner.id in MODULES) or node.attr.startswith("_"):
        raise _error(source, f"attribute {ast.unparse(node)!r} is not a numpy/math function or constant")
    if owner.id == "functools" and node.attr != "reduce":
        raise _error(source, f"functools.{node.attr} is not allowed")


def _math_function(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math"


class _Unvectorise(ast.NodeTransformer):
    """``numpy.vectorize(math.f, otypes=[float])(args)`` (how the worker writes a ``math``
    function for arrays, ``ARRAY_CALL``) -> ``math.f(args)``: checked as such, then wrapped
    again by :class:`_Vectorise`."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        wrapper = node.func
        if (
            isinstance(wrapper, ast.Call)
            and len(wrapper.args) == 1
            and _math_function(wrapper.args[0])
            and ast.unparse(wrapper) == ARRAY_CALL.format(ast.unparse(wrapper.args[0]))
        ):
            node.func = wrapper.args[0]
        return node


class _Vectorise(ast.NodeTransformer):
    """``math.f(args)`` -> ``numpy.vectorize(math.f, otypes=[float])(args)`` (``ARRAY_CALL``)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if _math_function(node.func):
            node.func = ast.parse(ARRAY_CALL.format(ast.unparse(node.func)), mode="eval").body
        return node


def _text(expression: ast.expr) -> str:
    return ast.unparse(_Vectorise().visit(expression))


__all__ = ["MODULES", "KernelCode", "KernelCodeError", "KernelSource", "kernel_code"]
