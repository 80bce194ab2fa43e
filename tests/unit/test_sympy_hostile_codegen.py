"""Generated code with hostile symbol names: every source compiles (C, Cython) or imports (Python).

A symbol may be named like a C macro (``M_SQRT2``, ``FP_NAN``, ``INFINITY``, ``linux``),
a Python builtin the generated code uses (``float``, ``abs``, ``math``), a Cython word
(``NULL``, ``cdef``, ``Py_ssize_t``), a keyword, a constant of the parser (``pi``, ``E``:
only through ``args``), a name of the generated code itself (``kernel``, ``t0``, ``arg0``),
a Unicode or an over-long Fortran name. Whatever the names, the code builds and computes
what ``evalf`` computes with the values given by the public argument names.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import keyword
import os
import shutil
import subprocess
import sys
import sysconfig
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy
from pydantic import ValidationError

from agents.contracts.sympy.errors import ToolError
from agents.contracts.sympy.payloads import GenerateCode
from agents.sympy.operations import Job, ToolConfig, execute
from agents.sympy.parser import parse

#: What the generated code must survive, besides the <math.h> macros the local compiler defines.
STATIC_HOSTILE = """
M_SQRT2 M_PI_2 M_PI_4 M_PI M_E M_LN2 M_LN10 M_1_PI M_2_PI M_2_SQRTPI M_SQRT1_2 M_LOG2E M_LOG10E M_PIl
FP_NAN FP_INFINITE FP_ZERO FP_NORMAL FP_SUBNORMAL FP_ILOGB0 FP_FAST_FMA INFINITY NAN HUGE_VAL HUGE_VALF
HUGE MAXFLOAT DOMAIN SING OVERFLOW UNDERFLOW TLOSS PLOSS MATH_ERRNO math_errhandling errno linux unix
isnan isinf signbit fpclassify iszero
NULL cdef cpdef cimport ctypedef nogil gil noexcept include DEF IF ELIF ELSE api public readonly extern
inline by fused bint Py_ssize_t Py_hash_t size_t ssize_t ptrdiff_t unicode basestring long sizeof typeof
address cython numpy scipy mpmath functools math cmath builtins
auto break case char const continue default do double else enum float for goto int register restrict
return short signed static struct switch typedef union unsigned void volatile while bool asm complex
pi E I oo EulerGamma GoldenRatio Catalan e Pi PI eulergamma
sin cos exp sqrt log pow fabs tgamma floor ceil erf abs dble real merge sign huge kind intent parameter
implicit none result function end
exit main printf malloc abort memcpy strlen puts sinf cosl fmod frexp j0 y1 round trunc
kernel t0 t1 t2 arg0 arg1 arg2 arg0_1 X x Y y xx_01 a_very_long_fortran_name_of_32chars
"""
#: Unicode names (the full-width x and the black-letter H are x and H once NFKC-normalised),
#: and a name of 64 characters (the longest a name field takes).
UNICODE_HOSTILE = ["\u03b8", "\u00b5", "\uff58", "\u210c", "\u03a9", "abcdefghij" * 6 + "1234"]
#: The arithmetic around the hostile symbols: every macro the C printer uses (M_SQRT2, M_PI_2,
#: M_E, M_1_PI...), constants without a C name, and functions every language has.
CORE = (
    "sqrt(2)*{a} + pi/2 + E + 1/pi + 2/pi + sqrt(2)/2 + log(2) + EulerGamma*{b} + GoldenRatio"
    " + sin({b})*exp(-{a}**2) + Abs({a}) + atan2({a}, {b}) + erf({b}) + tanh({a}*{b}) + {a}**3/7"
)
EXPR_BUDGET = 1900  # the parser accepts 2000 characters
ARGS_PER_KERNEL = 160


def _is_name(text: str) -> bool:
    return text.isidentifier() and not text.startswith("_") and not text[0].isdigit()


@functools.cache
def hostile_names() -> tuple[str, ...]:
    names = set(STATIC_HOSTILE.split()) | set(UNICODE_HOSTILE) | set(keyword.kwlist) | set(dir(builtins))
    names |= _compiler_macros()
    normal = {unicodedata.normalize("NFKC", n) for n in names}
    return tuple(sorted(n for n in normal if _is_name(n) and len(n) <= 64))


def _compiler_macros() -> set[str]:
    """The object-like and function-like macros <math.h> defines here, in C99 and GNU mode."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return set()
    found: set[str] = set()
    for std in ([], ["-std=c99"]):
        done = subprocess.run(
            [gcc, *std, "-dM", "-E", "-"], input="#include <math.h>\n", capture_output=True, text=True
        )
        for line in done.stdout.splitlines():
            if line.startswith("#define "):
                found.add(line.split()[1].split("(")[0])
    return found


def _symbol(name: str) -> bool:
    """True when the parser reads ``name`` as a symbol (not a constant, function or keyword)."""
    try:
        return isinstance(parse(name), sympy.Symbol)
    except ToolError:
        return False


@functools.cache
def kernels() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(expression, args)`` covering every hostile name: the ones the parser takes as symbols
    in the expression (two of them in the core arithmetic), the others as extra parameters."""
    names = hostile_names()
    symbols = [n for n in names if _symbol(n)]
    others = [n for n in names if not _symbol(n)]
    out: list[tuple[str, tuple[str, ...]]] = []
    while symbols or others:
        a, b = symbols.pop(0), symbols.pop(0)
        terms, args = [CORE.format(a=a, b=b)], [a, b]
        while symbols and len(args) < ARGS_PER_KERNEL:
            term = f"{len(args) % 7 + 2}*{symbols[0]}"
            if sum(map(len, terms)) + len(term) + 3 * len(terms) > EXPR_BUDGET:
                break
            terms.append(term)
            args.append(symbols.pop(0))
        while others and len(args) < ARGS_PER_KERNEL:
            args.append(others.pop(0))
        out.append((" + ".join(terms), tuple(args)))
    return tuple(out)


def values_for(args: tuple[str, ...]) -> list[float]:
    return [0.25 + 0.0625 * (i % 23) for i in range(len(args))]


def reference(expr: str, args: tuple[str, ...]) -> float:
    parsed = parse(expr)
    subs = {s: v for s, v in zip(args, values_for(args), strict=True) if _symbol(s)}
    return float(parsed.xreplace({sympy.Symbol(k): sympy.Float(v, 30) for k, v in subs.items()}).evalf(30))


def generated(expr: str, language: str, args: tuple[str, ...], name: str = "kernel") -> dict[str, Any]:
    request = GenerateCode(expr=expr, language=language, name=name, args=list(args))
    return execute(ToolConfig(), Job("run", request))


def assert_close(got: float, expected: float) -> None:
    assert abs(got - expected) <= 1e-9 * max(1.0, abs(expected)), (got, expected)


def test_the_hostile_names_are_many_and_all_reach_the_kernels() -> None:
    names = hostile_names()
    covered = {a for _, args in kernels() for a in args}
    assert set(names) == covered
    for must in ("M_SQRT2", "M_PI_2", "FP_NAN", "INFINITY", "float", "math", "NULL", "ValueError", "range"):
        assert must in covered
    assert all(len(expr) <= 2000 and len(args) <= 256 for expr, args in kernels())


@pytest.mark.parametrize("index", range(len(kernels())))
def test_generated_c_with_hostile_names_compiles_in_c99_and_gnu_mode_and_computes(
    index: int, tmp_path: Path
) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler: generated C cannot be compiled here")
    expr, args = kernels()[index]
    code = generated(expr, "c", args)
    assert code["args"] == list(args)
    values = values_for(args)
    decl = ", ".join("double" for _ in args)
    call = ", ".join(repr(v) for v in values)
    (tmp_path / "kernel.c").write_text(code["source"])
    main = f'int main(void) {{\n    printf("%.17g\\n", kernel({call}));\n    return 0;\n}}\n'
    (tmp_path / "main.c").write_text(f"#include <stdio.h>\ndouble kernel({decl});\n{main}")
    for std in (["-std=c99"], []):  # strict C99, and GNU mode (where linux and unix are macros)
        build = [gcc, *std, "-Wall", "-Werror", "kernel.c", "main.c", "-lm", "-o", "prog"]
        built = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, f"{' '.join(build)}:\n{built.stderr}\n{code['source']}"
        out = subprocess.run(["./prog"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
        assert_close(float(out.stdout), reference(expr, args))


@pytest.mark.parametrize("index", range(len(kernels())))
def test_generated_python_with_hostile_names_imports_and_computes(index: int) -> None:
    expr, args = kernels()[index]
    code = generated(expr, "python", args)
    namespace: dict[str, Any] = {}
    exec(compile(code["source"], "<generated>", "exec"), namespace)  # our own generated code
    values = values_for(args)
    assert_close(float(namespace["kernel"](*values)), reference(expr, args))
    arrays = [np.array([v, v]) for v in values]
    assert [float(v) for v in namespace["kernel"](*arrays)] == pytest.approx([reference(expr, args)] * 2)


@pytest.mark.parametrize("index", range(len(kernels())))
def test_generated_cython_with_hostile_names_builds_and_computes(index: int, tmp_path: Path) -> None:
    cython, gcc = shutil.which("cython", path=os.path.dirname(sys.executable)), shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if cython is None or gcc is None or not Path(include, "Python.h").exists():
        pytest.skip("Cython, gcc or the Python headers are missing: the Cython kernel cannot be built here")
    expr, args = kernels()[index]
    code = generated(expr, "cython", args)
    module = f"hostile{index}"
    (tmp_path / f"{module}.pyx").write_text(code["source"])
    transpiled = subprocess.run(
        [cython, "-3", f"{module}.pyx", "-o", f"{module}.c"], cwd=tmp_path, capture_output=True, text=True
    )
    assert transpiled.returncode == 0, f"{transpiled.stderr}\n{code['source']}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    build = [gcc, "-shared", "-fPIC", "-O0", f"-I{include}", f"{module}.c", "-o", f"{module}{suffix}", "-lm"]
    built = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    spec = importlib.util.spec_from_file_location(module, tmp_path / f"{module}{suffix}")
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    out = loaded.kernel(*[np.array([v]) for v in values_for(args)])
    assert_close(float(out[0]), reference(expr, args))


@pytest.mark.parametrize("index", range(len(kernels())))
def test_generated_fortran_with_hostile_names_compiles_and_computes(index: int, tmp_path: Path) -> None:
    gfortran = shutil.which("gfortran")
    if gfortran is None:
        pytest.skip("gfortran is not installed: generated Fortran cannot be compiled here")
    expr, args = kernels()[index]
    code = generated(expr, "fortran", args)
    call = ", &\n      ".join(f"{v!r}d0" for v in values_for(args))
    program = (
        "program main\n   implicit none\n   real(kind=8), external :: kernel\n"
        f"   print '(ES25.17)', kernel({call})\nend program\n"
    )
    (tmp_path / "kernel.f90").write_text(code["source"])
    (tmp_path / "main.f90").write_text(program)
    build = [gfortran, "-O0", "kernel.f90", "main.f90", "-o", "prog"]
    built = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True)
    assert built.returncode == 0, f"{built.stderr}\n{code['source']}"
    out = subprocess.run(["./prog"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert_close(float(out.stdout), reference(expr, args))


@pytest.mark.parametrize("language", ["c", "python", "cython", "fortran"])
def test_a_hostile_function_name_is_refused_or_spelled_safely(language: str) -> None:
    """As the function's name, a hostile name is ``bad_name`` where the language cannot use it
    (a name that is no ASCII identifier is refused by the request model already)."""
    accepted: list[str] = []
    for name in hostile_names():
        try:
            code = generated("x + 1", language, ("x",), name=name)
        except ValidationError:
            assert not name.isascii() or len(name) > 64, name
            continue
        except ToolError as exc:
            assert (exc.kind, exc.rule) == ("invalid", "bad_name"), (name, exc)
            continue
        accepted.append(name)
        if language == "python":
            namespace: dict[str, Any] = {}
            exec(compile(code["source"], "<generated>", "exec"), namespace)  # our own generated code
            assert namespace[name](2.0) == 3.0
    refused = {"c": ["M_SQRT2", "INFINITY", "linux", "exit"], "python": ["float", "numpy", "lambda"]}
    assert not set(refused.get(language, [])) & set(accepted)
    assert "energy" not in hostile_names() and generated("x", language, ("x",), name="energy")["source"]


def test_generated_c_for_function_names_that_are_accepted_compiles(tmp_path: Path) -> None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler: generated C cannot be compiled here")
    sources = []
    for name in hostile_names():
        try:
            sources.append((name, generated("x*sqrt(2) + pi/2", "c", ("x",), name=name)["source"]))
        except (ToolError, ValidationError):
            continue
    assert sources, "no hostile name was accepted as a C function name"
    (tmp_path / "all.c").write_text("\n".join(source for _, source in sources))  # one translation unit
    for std in (["-std=c99"], []):
        build = [gcc, *std, "-Wall", "-Werror", "-c", "all.c"]
        built = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True)
        assert built.returncode == 0, built.stderr[-3000:]


def test_renamed_parameters_are_named_in_the_source_and_the_metadata() -> None:
    code = generated("M_SQRT2*x + sqrt(2)", "c", ("M_SQRT2", "x", "NULL"))
    assert code["args"] == ["M_SQRT2", "x", "NULL"] and code["params"] == ["arg0", "x", "arg2"]
    assert "/* parameters: arg0 is M_SQRT2, arg2 is NULL */" in code["source"]
    assert "#define M_SQRT2 1.41421356237309504880" in code["source"]
    python = generated("float*x + math", "python", ("float", "math", "x"))
    assert python["params"] == ["arg0", "arg1", "x"]
    assert "Parameters: arg0 is float, arg1 is math." in python["source"]


@pytest.mark.parametrize(
    ("expr", "language"),
    [("x*I", "c"), ("x*I", "cython"), ("x*I", "fortran"), ("1/0 + x", "c"), ("1/0 + x", "python")],
)
def test_what_a_real_kernel_cannot_be_is_refused(expr: str, language: str) -> None:
    with pytest.raises(ToolError) as caught:
        generated(expr, language, ("x",))
    assert (caught.value.kind, caught.value.rule) == ("invalid", "codegen_unsupported")
