"""Source code of a numeric kernel ``name(args...)``: C99, Fortran 95, Python/numpy, Cython.

The expression is optionally reduced by common subexpression elimination
first (temporaries ``t0, t1, ...``), and each language's SymPy printer writes
the arithmetic. A symbol the language cannot spell (a keyword, a name the
generated code itself uses, a Unicode name in C, a case-insensitive clash in
Fortran) is renamed; ``params`` in the result lists the names used. A function
the language has no implementation of is an ``invalid`` error, never code
that fails to compile.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sympy
from sympy.printing.c import C99CodePrinter
from sympy.printing.fortran import FCodePrinter
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.pycode import PythonCodePrinter

from agents.contracts.sympy.codegen import ARRAY_CALL
from agents.contracts.sympy.errors import ToolError


def _words(text: str) -> set[str]:
    return set(text.split())


_ASCII_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_C_WORDS = _words(
    "auto break case char const continue default do double else enum extern float for goto if inline int "
    "long register restrict return short signed sizeof static struct switch typedef union unsigned void "
    "volatile while"
)
#: Names the generated code calls or imports: a parameter must not shadow them.
_MATH = _words(
    "sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh exp log log10 log2 sqrt cbrt pow "
    "fabs floor ceil erf erfc tgamma lgamma copysign fmin fmax hypot M_PI M_E INFINITY NAN abs math"
)
_CYTHON_WORDS = _words("cdef cpdef cimport ctypedef nogil gil noexcept include DEF IF ELIF ELSE api public")
RESERVED: dict[str, set[str]] = {
    "c": _C_WORDS | _MATH,
    "fortran": {w.lower() for w in _MATH} | {"result", "real", "function", "end", "implicit", "none"},
    "python": set(keyword.kwlist) | {"numpy", "math", "functools"},
    "cython": _C_WORDS | _MATH | _CYTHON_WORDS | set(keyword.kwlist) | {"cython", "numpy"},
}
_LIBC = {"gamma": "tgamma", "pi": "M_PI", "e": "M_E", "inf": "INFINITY", "nan": "NAN"}


@dataclass(frozen=True)
class Kernel:
    """What the renderers get: safe names, CSE temporaries and the reduced expression."""

    name: str
    params: list[str]
    temporaries: list[tuple[str, Any]]
    result: Any
    source_expr: str


def generate(expr: Any, language: str, name: str, args: list[str] | None, use_cse: bool) -> dict[str, Any]:
    """``{"args", "params", "source", "ops_before", "ops_after"}`` for ``expr`` in ``language``."""
    if not isinstance(expr, sympy.Expr):
        raise ToolError("invalid", "not_numeric", f"cannot generate code for a {type(expr).__name__}")
    symbols = _parameters(expr, args)
    reserved = RESERVED[language]
    if not _ASCII_NAME.match(name) or _key(name, language) in {_key(r, language) for r in reserved}:
        raise ToolError("invalid", "bad_name", f"{name!r} cannot name a {language} function")
    safe = _safe_names(symbols, language, {name})
    renamed = expr.xreplace({s: sympy.Symbol(safe[s]) for s in symbols})
    temporaries, result = _reduce(renamed, language, set(safe.values()) | {name}, use_cse)
    kernel = Kernel(name, [safe[s] for s in symbols], temporaries, result, sympy.sstr(expr))
    return {
        "args": [s.name for s in symbols],
        "params": kernel.params,
        "source": RENDERERS[language](kernel),
        "ops_before": int(sympy.count_ops(expr)),
        "ops_after": sum(int(sympy.count_ops(e)) for _, e in temporaries) + int(sympy.count_ops(result)),
    }


def _parameters(expr: Any, args: list[str] | None) -> list[Any]:
    free = {s.name: s for s in expr.free_symbols}
    if args is None:
        return [free[n] for n in sorted(free)]
    missing = sorted(set(free) - set(args))
    if missing:
        raise ToolError("invalid", "missing_args", f"args lacks {', '.join(missing)}")
    if len(set(args)) != len(args):
        raise ToolError("invalid", "duplicate_args", "args names a symbol twice")
    return [free.get(n, sympy.Symbol(n)) for n in args]


def _key(name: str, language: str) -> str:
    return name.lower() if language == "fortran" else name


def _safe_names(symbols: list[Any], language: str, taken: set[str]) -> dict[Any, str]:
    used = {_key(n, language) for n in RESERVED[language] | taken}
    names: dict[Any, str] = {}
    for i, symbol in enumerate(symbols):
        wanted = symbol.name
        fits = _ASCII_NAME.match(wanted) and (language != "fortran" or len(wanted) <= 31)
        if not fits or _key(wanted, language) in used:
            wanted = _fresh(f"arg{i}", language, used)
        used.add(_key(wanted, language))
        names[symbol] = wanted
    return names


def _fresh(base: str, language: str, used: set[str]) -> str:
    candidate, n = base, 0
    while _key(candidate, language) in used:
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _reduce(expr: Any, language: str, used: set[str], use_cse: bool) -> tuple[list[tuple[str, Any]], Any]:
    if not use_cse:
        return [], expr
    taken = {_key(n, language) for n in used | RESERVED[language]}

    def temporaries() -> Iterator[Any]:
        for i in range(10**9):
            if _key(f"t{i}", language) not in taken:
                yield sympy.Symbol(f"t{i}")

    replacements, (reduced,) = sympy.cse([expr], symbols=temporaries())
    return [(s.name, e) for s, e in replacements], reduced


# -- the languages -------------------------------------------------------------------------
def _checked(printed: Any, language: str) -> tuple[set[Any], str]:
    """The code of a ``human=False`` printer, refusing functions the language lacks."""
    constants, unsupported, code = printed
    if unsupported:
        names = ", ".join(sorted({_name_of(f) for f in unsupported}))
        raise ToolError("invalid", "codegen_unsupported", f"{language} has no {names}")
    return set(constants), code


def _name_of(unsupported: Any) -> str:
    if isinstance(unsupported, sympy.Symbol):
        return str(unsupported.name)
    return str(getattr(unsupported.func, "__name__", unsupported))


#: Integer exponents up to this are written as products: ``pow(x, 4)`` costs a libm call
#: (no C compiler replaces it without -ffast-math), ``(x*x)*(x*x)`` two multiplications.
MAX_PRODUCT_POWER = 16


def _product_power(base: str, n: int) -> str:
    """``base**n`` by repeated squaring, spelled out; the compiler merges the repeated halves."""
    if n == 1:
        return base
    half = _product_power(base, n // 2)
    return f"({half}*{half}*{base})" if n % 2 else f"({half}*{half})"


def _integer_power(printer: Any, expr: Any) -> str | None:
    exponent = expr.exp
    if not (exponent.is_Integer and 2 <= abs(int(exponent)) <= MAX_PRODUCT_POWER):
        return None
    product = _product_power(printer.parenthesize(expr.base, 50), abs(int(exponent)))
    return product if exponent > 0 else f"(1.0/{product})"


class _CPrinter(C99CodePrinter):  # type: ignore[misc]
    def _print_Pow(self, expr: Any) -> str:
        return _integer_power(self, expr) or str(super()._print_Pow(expr))


def _c(kernel: Kernel) -> str:
    printer = _CPrinter({"human": False})
    params = ", ".join(f"double {p}" for p in kernel.params) or "void"
    body = [f"    const double {t} = {_checked(printer.doprint(e), 'C')[1]};" for t, e in kernel.temporaries]
    body.append(f"    return {_checked(printer.doprint(kernel.result), 'C')[1]};")
    head = f"/* {kernel.name}: generated by L9 from {kernel.source_expr[:200]} */"
    macros = _c_macros(printer, "\n".join(body))
    return "\n".join(
        [head, "#include <math.h>", *macros, "", f"double {kernel.name}({params}) {{", *body, "}", ""]
    )


def _c_macros(printer: Any, body: str) -> list[str]:
    """``M_PI`` and friends are POSIX, not C99: define the ones used when math.h does not."""
    values = {name: sympy.N(expr, 21) for expr, name in printer.math_macros.items()}
    lines: list[str] = []
    for name in sorted(set(re.findall(r"\bM_[A-Z0-9_]+\b", body)) & set(values)):
        lines += [f"#ifndef {name}", f"#define {name} {values[name]}", "#endif"]
    return lines


def _fortran(kernel: Kernel) -> str:
    printer = FCodePrinter({"human": False, "source_format": "free", "standard": 95})
    constants: set[Any] = set()
    lines: list[str] = []
    for target, expr in [*kernel.temporaries, (kernel.name, kernel.result)]:
        found, code = _checked(printer.doprint(expr, assign_to=target), "Fortran")
        constants |= found
        lines.extend(code.splitlines())
    decls = [f"real(kind=8), intent(in) :: {p}" for p in kernel.params]
    decls += [f"real(kind=8), parameter :: {c} = {v}" for c, v in sorted(constants, key=str)]
    decls += [f"real(kind=8) :: {t}" for t, _ in kernel.temporaries]
    head = f"real(kind=8) function {kernel.name}({', '.join(kernel.params)})"
    body = ["implicit none", *decls, *lines]
    return "\n".join(
        [f"! {kernel.name}: generated by L9", head, *("   " + ln for ln in body), "end function", ""]
    )


class _ArrayPrinter(NumPyPrinter):  # type: ignore[misc]
    """NumPy code; a function numpy lacks (``erf``, ``gamma``, ...) is Python's ``math`` one
    applied element by element, so the kernel takes arrays as well as numbers."""

    def _module_format(self, fqn: str, register: bool = True) -> str:
        name: str = super()._module_format(fqn, register)
        if fqn.startswith("math."):
            return ARRAY_CALL.format(name)
        return name


def _python(kernel: Kernel) -> str:
    printer = _ArrayPrinter({"human": False, "fully_qualified_modules": True})
    body = [f"    {t} = {_checked(printer.doprint(e), 'numpy')[1]}" for t, e in kernel.temporaries]
    body.append(f"    return {_checked(printer.doprint(kernel.result), 'numpy')[1]}")
    head = f'    """Generated by L9 from {kernel.source_expr[:200]}."""'
    imports = [f"import {module}" for module in sorted({"numpy", *printer.module_imports})]
    return "\n".join([*imports, "", "", f"def {kernel.name}({', '.join(kernel.params)}):", head, *body, ""])


class _CythonPrinter(PythonCodePrinter):  # type: ignore[misc]
    """Python syntax with C math: ``math.sin`` -> ``sin`` cimported from libc.math."""

    def __init__(self) -> None:
        super().__init__({"human": False})
        self.libc: set[str] = set()

    def _module_format(self, fqn: str, register: bool = True) -> str:
        name = fqn.split(".")[-1]
        name = _LIBC.get(name, name)
        if fqn.startswith("math.") and name not in _MATH:
            self._not_supported.add(sympy.Symbol(name))
        elif fqn.startswith("math."):
            self.libc.add(name)
        return name

    def _print_Rational(self, expr: Any) -> str:
        return f"({expr.p}.0/{expr.q}.0)"

    def _print_Pow(self, expr: Any, rational: bool = False) -> str:
        return _integer_power(self, expr) or str(super()._print_Pow(expr, rational))


def _cython(kernel: Kernel) -> str:
    printer = _CythonPrinter()
    body = [
        f"    cdef double {t} = {_checked(printer.doprint(e), 'Cython')[1]}" for t, e in kernel.temporaries
    ]
    body.append(f"    return {_checked(printer.doprint(kernel.result), 'Cython')[1]}")
    scalar = f"_{kernel.name}_scalar"
    params = ", ".join(f"double {p}" for p in kernel.params)
    lines = [
        "# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, cpow=True",
        f"# {kernel.name}: generated by L9",
        "import numpy as _np",
        *([f"from libc.math cimport {', '.join(sorted(printer.libc))}"] if printer.libc else []),
        "",
        "",
        f"cdef inline double {scalar}({params}) noexcept nogil:",
        *body,
        "",
        "",
        *_cython_ufunc(kernel.name, scalar, kernel.params),
    ]
    return "\n".join(lines)


def _cython_ufunc(name: str, scalar: str, params: list[str]) -> list[str]:
    """``name(double[::1] x, ...)``: the scalar kernel over equal-length arrays."""
    if not params:
        return [f"def {name}():", f"    return {scalar}()", ""]
    arrays = ", ".join(f"const double[::1] {p}" for p in params)
    first, call = params[0], ", ".join(f"{p}[_i]" for p in params)
    checks = [
        f"    if {p}.shape[0] != _n:\n        raise ValueError('{p}: length differs')" for p in params[1:]
    ]
    return [
        f"def {name}({arrays}):",
        f"    cdef Py_ssize_t _i, _n = {first}.shape[0]",
        *checks,
        "    _out = _np.empty(_n)",
        "    cdef double[::1] _res = _out",
        "    with nogil:",
        "        for _i in range(_n):",
        f"            _res[_i] = {scalar}({call})",
        "    return _out",
        "",
    ]


RENDERERS: dict[str, Callable[[Kernel], str]] = {
    "c": _c,
    "fortran": _fortran,
    "python": _python,
    "cython": _cython,
}
