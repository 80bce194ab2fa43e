"""Source code of a numeric kernel ``name(args...)``: C99, Fortran 95, Python/numpy, Cython.

The expression is optionally reduced by common subexpression elimination
first (temporaries ``t0, t1, ...``), and each language's SymPy printer writes
the arithmetic. A symbol the language cannot spell is renamed ``arg<i>``: a
keyword, a name the generated code itself uses (a function, a module, a Python
builtin such as ``float``, a Cython word such as ``NULL`` or ``range``), a name
that may be a C macro (``M_SQRT2``, ``FP_NAN``, ``INFINITY``, ``linux``: any
all-capital name and the ``M_``/``FP_``/``HUGE_``/``MATH_`` families), a
Unicode name, a case-insensitive clash in Fortran. ``args`` in the result keeps
the public names, ``params`` lists the names used, and the source names every
renamed one in a comment (``parameters: arg0 is M_SQRT2``). A function name the
language cannot use (those, and in C the C library's) is ``invalid.bad_name``;
a function or constant the language has no implementation of (``I`` in a real
kernel, ``zoo`` in Python) is ``invalid.codegen_unsupported``, never code that
fails to compile.
"""

from __future__ import annotations

import builtins
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


def _key(name: str, language: str) -> str:
    return name.lower() if language == "fortran" else name


_ASCII_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_C_WORDS = _words(
    "auto break case char const continue default do double else enum extern float for goto if inline int "
    "long register restrict return short signed sizeof static struct switch typedef union unsigned void "
    "volatile while alignas alignof bool constexpr false nullptr static_assert thread_local true typeof "
    "typeof_unqual asm fortran complex imaginary"
)
#: Lower-case macros of <math.h> (C99, POSIX, glibc, BSD) and a compiler's own in GNU mode.
_C_MACROS = _words(
    "fpclassify isfinite isgreater isgreaterequal isinf isless islessequal islessgreater isnan isnormal "
    "isunordered signbit math_errhandling issignaling iscanonical iseqsig issubnormal iszero errno "
    "linux unix i386 i686 sun sparc mips vax arm"
)
#: Spellings a macro may have: all capitals (INFINITY, NAN, DOMAIN, HUGE), and the families of
#: <math.h> (M_SQRT2, M_PIl, FP_NAN, HUGE_VALF, MATH_ERRNO). A symbol spelled so is renamed in
#: C and Cython: <math.h> differs between platforms, a list of its macros is never complete.
_C_MACRO_LIKE = re.compile(r"^(?:[A-Z][A-Z0-9_]+|(?:M|FP|HUGE|MATH)_\w*)$")
#: Names the generated code calls or imports: a parameter must not shadow them.
_MATH = _words(
    "sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh exp exp2 expm1 log log10 log2 log1p "
    "sqrt cbrt pow fabs floor ceil erf erfc tgamma lgamma copysign fmin fmax fma hypot M_PI M_E INFINITY "
    "NAN abs math"
)
_PYTHON_BUILTINS = {name for name in dir(builtins) if not name.startswith("_")}
_PYTHON_MODULES = _words("numpy math functools scipy mpmath cmath builtins")
_CYTHON_WORDS = _words(
    "cdef cpdef cimport ctypedef nogil gil noexcept include DEF IF ELIF ELSE api public readonly extern "
    "inline by fused NULL bint Py_ssize_t Py_hash_t Py_UCS4 Py_UNICODE size_t ssize_t ptrdiff_t unicode "
    "basestring long sizeof typeof address cython numpy cppclass namespace new operator"
)
#: Fortran intrinsics the printer writes, the words of the generated function, and the
#: constants it declares as parameters (Fortran names are case-insensitive).
_FORTRAN_WORDS = _words(
    "abs acos acosh aimag aint anint asin asinh atan atan2 atanh ceiling cmplx conjg cos cosh dble dim "
    "dprod epsilon erf erfc exp floor gamma huge hypot int kind log log10 log_gamma max merge min mod "
    "modulo nint real sign sin sinh sqrt tan tanh tiny result function end implicit none intent in "
    "parameter pi e eulergamma goldenratio catalan"
)
#: The C library's functions (and ``main``): the generated function is external, so its name must
#: not be one (gcc refuses ``double exit(double)``: conflicting types for a built-in).
_C_LIBRARY = _words(
    "main abort abs atexit atof atoi atol atoll bsearch calloc div exit free getenv labs llabs ldiv lldiv "
    "malloc mblen mbstowcs mbtowc qsort rand realloc srand strtod strtof strtol strtold strtoll strtoul "
    "strtoull system wcstombs wctomb alloca clearerr fclose feof ferror fflush fgetc fgetpos fgets fopen "
    "fprintf fputc fputs fread freopen fscanf fseek fsetpos ftell fwrite getc getchar gets perror printf "
    "putc putchar puts remove rename rewind scanf setbuf setvbuf snprintf sprintf sscanf tmpfile tmpnam "
    "ungetc vfprintf vprintf vsnprintf vsprintf memchr memcmp memcpy memmove memset strcat strchr strcmp "
    "strcoll strcpy strcspn strerror strlen strncat strncmp strncpy strpbrk strrchr strspn strstr strtok "
    "strxfrm strdup strndup bzero bcopy index rindex isalnum isalpha isblank iscntrl isdigit isgraph "
    "islower isprint ispunct isspace isupper isxdigit tolower toupper clock difftime mktime time asctime "
    "ctime gmtime localtime strftime signal raise setjmp longjmp"
)
_LIBM = _words(
    "sin cos tan asin acos atan atan2 sinh cosh tanh asinh acosh atanh exp exp2 expm1 exp10 pow10 log log10 "
    "log2 log1p logb ilogb sqrt cbrt pow fabs floor ceil trunc round lround llround rint lrint llrint "
    "nearbyint erf erfc tgamma lgamma gamma copysign fmin fmax fma fdim fmod remainder remquo frexp ldexp "
    "modf nan nextafter nexttoward scalbn scalbln hypot significand drem finite j0 j1 jn y0 y1 yn sincos"
)
_C_FUNCTIONS = _C_LIBRARY | _LIBM | {f"{f}{suffix}" for f in _LIBM for suffix in ("f", "l")}
RESERVED: dict[str, set[str]] = {
    "c": _C_WORDS | _C_MACROS | _MATH,
    "fortran": {w.lower() for w in _MATH} | _FORTRAN_WORDS,
    "python": set(keyword.kwlist) | _PYTHON_BUILTINS | _PYTHON_MODULES,
    "cython": _C_WORDS | _MATH | _CYTHON_WORDS | set(keyword.kwlist) | _PYTHON_BUILTINS | _PYTHON_MODULES,
}
_RESERVED_KEYS = {language: {_key(n, language) for n in names} for language, names in RESERVED.items()}
_LIBC = {"gamma": "tgamma", "pi": "M_PI", "e": "M_E", "inf": "INFINITY", "nan": "NAN"}
#: Kernels in these languages compute doubles: an imaginary unit has no place in them.
_REAL_ONLY = {"c": "C", "fortran": "Fortran", "cython": "Cython"}


def reserved(name: str, language: str) -> bool:
    """True when ``name`` may not be a parameter (or the function) in ``language``: a keyword,
    a name the generated code uses (a function, a module, a builtin), or a possible macro."""
    if _key(name, language) in _RESERVED_KEYS[language]:
        return True
    return language in ("c", "cython") and _C_MACRO_LIKE.match(name) is not None


@dataclass(frozen=True)
class Kernel:
    """What the renderers get: safe names, CSE temporaries and the reduced expression."""

    name: str
    params: list[str]
    temporaries: list[tuple[str, Any]]
    result: Any
    source_expr: str
    #: ``arg0 is M_SQRT2, ...`` for the symbols renamed ("" when none was), said in the source.
    renamed: str = ""


def generate(expr: Any, language: str, name: str, args: list[str] | None, use_cse: bool) -> dict[str, Any]:
    """``{"args", "params", "source", "ops_before", "ops_after"}`` for ``expr`` in ``language``."""
    if not isinstance(expr, sympy.Expr):
        raise ToolError("invalid", "not_numeric", f"cannot generate code for a {type(expr).__name__}")
    if language in _REAL_ONLY and expr.has(sympy.I):
        label = _REAL_ONLY[language]
        raise ToolError("invalid", "codegen_unsupported", f"{label} kernels are real: {label} has no I")
    symbols = _parameters(expr, args)
    if not _ASCII_NAME.match(name) or reserved(name, language) or (language == "c" and name in _C_FUNCTIONS):
        raise ToolError("invalid", "bad_name", f"{name!r} cannot name a {language} function")
    safe = _safe_names(symbols, language, {name})
    renamed = expr.xreplace({s: sympy.Symbol(safe[s]) for s in symbols})
    temporaries, result = _reduce(renamed, language, set(safe.values()) | {name}, use_cse)
    kernel = Kernel(
        name,
        [safe[s] for s in symbols],
        temporaries,
        result,
        sympy.sstr(expr),
        _renamed([s.name for s in symbols], [safe[s] for s in symbols]),
    )
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


def _safe_names(symbols: list[Any], language: str, taken: set[str]) -> dict[Any, str]:
    """Each symbol's parameter name: its own where the language can spell it, else ``arg<i>``.

    Names kept are settled first, so a renamed one never takes a name a later symbol keeps.
    """
    used = {_key(n, language) for n in taken}
    kept: dict[Any, str] = {}
    for symbol in symbols:
        name = symbol.name
        fits = _ASCII_NAME.match(name) and (language != "fortran" or len(name) <= 31)
        if fits and not reserved(name, language) and _key(name, language) not in used:
            kept[symbol] = name
            used.add(_key(name, language))
    names: dict[Any, str] = {}
    for i, symbol in enumerate(symbols):
        if symbol not in kept:
            kept[symbol] = _fresh(f"arg{i}", language, used)
            used.add(_key(kept[symbol], language))
        names[symbol] = kept[symbol]
    return names


def _fresh(base: str, language: str, used: set[str]) -> str:
    candidate, n = base, 0
    while _key(candidate, language) in used or reserved(candidate, language):
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _renamed(args: list[str], params: list[str]) -> str:
    """``arg0 is M_SQRT2, arg1 is lambda``: how the source names the symbols it had to rename."""
    return ", ".join(f"{p} is {a}" for a, p in zip(args, params, strict=True) if a != p)


def _reduce(expr: Any, language: str, used: set[str], use_cse: bool) -> tuple[list[tuple[str, Any]], Any]:
    if not use_cse:
        return [], expr
    taken = {_key(n, language) for n in used}

    def temporaries() -> Iterator[Any]:
        for i in range(10**9):
            name = f"t{i}"
            if _key(name, language) not in taken and not reserved(name, language):
                yield sympy.Symbol(name)

    replacements, (reduced,) = sympy.cse([expr], symbols=temporaries())
    return [(s.name, e) for s, e in replacements], reduced


# -- the languages -------------------------------------------------------------------------
def _printed(printer: Any, expr: Any, language: str, **settings: Any) -> tuple[set[Any], str]:
    """``printer.doprint(expr)`` checked; a printer that fails on a construct (the Python one
    on ``zoo``) means the language cannot spell it."""
    try:
        printed = printer.doprint(expr, **settings)
    except (MemoryError, SystemError, RecursionError):
        raise
    except Exception as exc:
        raise ToolError(
            "invalid", "codegen_unsupported", f"{language} cannot write this: {type(exc).__name__}: {exc}"
        ) from None
    return _checked(printed, language)


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

    def _print_NumberSymbol(self, expr: Any) -> str:
        """``pi``, ``E``: their macro; ``EulerGamma``, ``GoldenRatio``: their value (C has no
        name for them, and SymPy would print an undeclared one)."""
        if expr in self.math_macros:
            return str(super()._print_NumberSymbol(expr))
        return format(float(expr), ".17g")


def _c(kernel: Kernel) -> str:
    printer = _CPrinter({"human": False})
    params = ", ".join(f"double {p}" for p in kernel.params) or "void"
    body = [f"    const double {t} = {_printed(printer, e, 'C')[1]};" for t, e in kernel.temporaries]
    body.append(f"    return {_printed(printer, kernel.result, 'C')[1]};")
    head = [f"/* {kernel.name}: generated by L9 from {kernel.source_expr[:200]} */"]
    head += _notes("/* parameters: ", kernel.renamed, " */")
    macros = _c_macros(printer, "\n".join(body))
    return "\n".join(
        [*head, "#include <math.h>", *macros, "", f"double {kernel.name}({params}) {{", *body, "}", ""]
    )


def _c_macros(printer: Any, body: str) -> list[str]:
    """``M_PI`` and friends are POSIX, not C99: define the ones used when math.h does not.

    SymPy knows each by two expressions (``sqrt(2)`` and ``Sqrt(2)``): the value is the
    one that evaluates to a number.
    """
    values: dict[str, Any] = {}
    for expr, name in printer.math_macros.items():
        value = sympy.N(expr, 21)
        if value.is_Float:
            values.setdefault(name, value)
    lines: list[str] = []
    for name in sorted(set(re.findall(r"\bM_[A-Z0-9_]+\b", body)) & set(values)):
        lines += [f"#ifndef {name}", f"#define {name} {values[name]}", "#endif"]
    return lines


def _notes(start: str, text: str, end: str = "", width: int = 96) -> list[str]:
    """``text`` as comment lines of at most about ``width`` characters (none for no text)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return [f"{start}{line}{end}" for line in lines if line]


def _fortran(kernel: Kernel) -> str:
    printer = FCodePrinter({"human": False, "source_format": "free", "standard": 95})
    constants: set[Any] = set()
    lines: list[str] = []
    for target, expr in [*kernel.temporaries, (kernel.name, kernel.result)]:
        found, code = _printed(printer, expr, "Fortran", assign_to=target)
        constants |= found
        lines.extend(code.splitlines())
    decls = [f"real(kind=8), intent(in) :: {p}" for p in kernel.params]
    decls += [f"real(kind=8), parameter :: {c} = {v}" for c, v in sorted(constants, key=str)]
    decls += [f"real(kind=8) :: {t}" for t, _ in kernel.temporaries]
    body = ["implicit none", *decls, *lines]
    notes = [f"! {kernel.name}: generated by L9", *_notes("! parameters: ", kernel.renamed)]
    return "\n".join([*notes, *_fortran_head(kernel), *("   " + ln for ln in body), "end function", ""])


def _fortran_head(kernel: Kernel) -> list[str]:
    """``real(kind=8) function name(a, b, ...)``, continued with ``&`` before 132 columns."""
    lines = [f"real(kind=8) function {kernel.name}("]
    for i, param in enumerate(kernel.params):
        text = param + ("," if i < len(kernel.params) - 1 else "")
        if len(lines[-1]) + len(text) + 3 > 100:
            lines[-1] += " &"
            lines.append("      ")
        lines[-1] += text if lines[-1].endswith(("(", " ")) else f" {text}"
    lines[-1] += ")"
    return lines


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
    body = [f"    {t} = {_printed(printer, e, 'numpy')[1]}" for t, e in kernel.temporaries]
    body.append(f"    return {_printed(printer, kernel.result, 'numpy')[1]}")
    renamed = f" Parameters: {kernel.renamed}." if kernel.renamed else ""
    head = f'    """Generated by L9 from {kernel.source_expr[:200]}.{renamed}"""'
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
    body = [f"    cdef double {t} = {_printed(printer, e, 'Cython')[1]}" for t, e in kernel.temporaries]
    body.append(f"    return {_printed(printer, kernel.result, 'Cython')[1]}")
    scalar = f"_{kernel.name}_scalar"
    params = ", ".join(f"double {p}" for p in kernel.params)
    lines = [
        "# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, cpow=True",
        f"# {kernel.name}: generated by L9",
        *_notes("# parameters: ", kernel.renamed),
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
