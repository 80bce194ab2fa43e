"""Generated C, Fortran, Python/numpy and Cython: built with real toolchains, run, checked against evalf."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest

from agents.contracts.sympy.errors import ToolError
from agents.contracts.sympy.payloads import Evaluate, GenerateCode
from agents.sympy.operations import Job, ToolConfig, execute

EXPRS = {
    "smooth": "exp(-x**2/2)*cos(3*x) + sin(y)**2 + 2",
    "determinant": "det(Matrix([[x, 1, y], [y, x, 1], [1, y, x]])) + 30 + Abs(x)/3",
    "rational": "(x**3 + 2*x*y + 1)/(x**2 + y**2 + 1) + sqrt(2 + y) + pi",
}
XS = [-1.75, -0.5, 0.125, 0.9, 1.6]
YS = [0.3, -1.2, 1.9, 0.05, -0.7]


def code(expr: str, language: str, **kw: Any) -> dict[str, Any]:
    request = GenerateCode(expr=expr, language=language, **kw)
    return execute(ToolConfig(), Job("run", request))


def reference(expr: str, xs: list[float] = XS, ys: list[float] = YS) -> list[str]:
    request = Evaluate(expr=expr, points={"x": xs, "y": ys}, backend="evalf", precision=40)
    digits: list[str] = execute(ToolConfig(), Job("run", request))["digits"]
    return digits


def assert_agrees(values: list[float], digits: list[str]) -> None:
    for got, exact in zip(values, digits, strict=True):
        ref = mpmath.mpf(exact)
        assert abs((mpmath.mpf(got) - ref) / ref) <= 1e-12, (got, exact)


def run_program(cmd: list[str], cwd: Path) -> list[float]:
    built = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, f"{' '.join(cmd)} failed:\n{built.stderr}"
    out = subprocess.run(["./prog"], cwd=cwd, check=True, capture_output=True, text=True, timeout=30).stdout
    return [float(v) for v in out.split()]


@pytest.mark.parametrize("name", sorted(EXPRS))
def test_generated_c_compiles_and_matches_evalf(name: str, tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: generated C cannot be compiled here")
    generated = code(EXPRS[name], "c", name="kernel")
    assert generated["params"] == ["x", "y"]
    calls = "\n".join(f'    printf("%.17g\\n", kernel({x!r}, {y!r}));' for x, y in zip(XS, YS, strict=True))
    (tmp_path / "kernel.c").write_text(generated["source"])
    (tmp_path / "main.c").write_text(
        f"#include <stdio.h>\ndouble kernel(double, double);\nint main(void) {{\n{calls}\n    return 0;\n}}\n"
    )
    values = run_program(
        [gcc, "-std=c99", "-O2", "-Wall", "-Werror", "kernel.c", "main.c", "-lm", "-o", "prog"], tmp_path
    )
    assert_agrees(values, reference(EXPRS[name]))


@pytest.mark.parametrize("name", sorted(EXPRS))
def test_generated_fortran_compiles_and_matches_evalf(name: str, tmp_path: Path) -> None:
    gfortran = shutil.which("gfortran")
    if gfortran is None:
        pytest.skip("gfortran is not installed: generated Fortran cannot be compiled here")
    generated = code(EXPRS[name], "fortran", name="kernel")
    calls = "\n".join(f"   print '(ES25.17)', kernel({x!r}d0, {y!r}d0)" for x, y in zip(XS, YS, strict=True))
    program = f"program main\n   implicit none\n   real(kind=8), external :: kernel\n{calls}\nend program\n"
    (tmp_path / "kernel.f90").write_text(generated["source"])
    (tmp_path / "main.f90").write_text(program)
    values = run_program([gfortran, "-O2", "kernel.f90", "main.f90", "-o", "prog"], tmp_path)
    assert_agrees(values, reference(EXPRS[name]))


@pytest.mark.parametrize("name", sorted(EXPRS))
def test_generated_python_runs_on_arrays_and_matches_evalf(name: str) -> None:
    generated = code(EXPRS[name], "python", name="kernel")
    namespace: dict[str, Any] = {}
    exec(compile(generated["source"], "<generated>", "exec"), namespace)  # our own generated code
    values = namespace["kernel"](np.array(XS), np.array(YS))
    assert_agrees(list(values), reference(EXPRS[name]))


@pytest.mark.parametrize(
    "expr", ["erf(x) + gamma(y + 3)", "Max(x, y)*Min(x, y**2) + 7", "erfc(x)*gamma(y + 2)"]
)
def test_generated_python_imports_what_it_calls_and_takes_arrays(expr: str) -> None:
    """Functions numpy lacks come from ``math`` (and ``functools`` for Max/Min): imported, and
    applied element by element, in a fresh namespace with nothing else in it."""
    generated = code(expr, "python", name="kernel")
    namespace: dict[str, Any] = {}
    exec(compile(generated["source"], "<generated>", "exec"), namespace)  # our own generated code
    assert_agrees(list(namespace["kernel"](np.array(XS), np.array(YS))), reference(expr))
    scalar = namespace["kernel"](XS[0], YS[0])
    assert_agrees([float(scalar)], reference(expr, XS[:1], YS[:1]))


def test_generated_cython_builds_and_matches_evalf(tmp_path: Path) -> None:
    cython, gcc = shutil.which("cython", path=os.path.dirname(sys.executable)), shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if cython is None or gcc is None or not Path(include, "Python.h").exists():
        pytest.skip("Cython, gcc or the Python headers are missing: the Cython kernel cannot be built here")
    expr = " + ".join(EXPRS.values())
    generated = code(expr, "cython", name="kernel")
    (tmp_path / "kernel.pyx").write_text(generated["source"])
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run([cython, "-3", "kernel.pyx", "-o", "kernel.c"], cwd=tmp_path, check=True, timeout=120)
    build = [gcc, "-shared", "-fPIC", "-O2", f"-I{include}", "kernel.c", "-o", f"kernel{suffix}", "-lm"]
    subprocess.run(build, cwd=tmp_path, check=True, capture_output=True, timeout=300)
    spec = importlib.util.spec_from_file_location("kernel", tmp_path / f"kernel{suffix}")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert_agrees(list(module.kernel(np.array(XS), np.array(YS))), reference(expr))
    with pytest.raises(ValueError, match="length differs"):
        module.kernel(np.array(XS), np.array(YS[:2]))


def test_names_the_language_cannot_spell_are_renamed(tmp_path: Path) -> None:
    c = code("int + double*pow + θ + t0*sin(int)", "c", args=["int", "double", "pow", "θ", "t0"])
    assert c["args"] == ["int", "double", "pow", "θ", "t0"]
    assert c["params"] == ["arg0", "arg1", "arg2", "arg3", "t0"]
    assert "double arg0, double arg1, double arg2, double arg3, double t0" in c["source"]
    fortran = code("x + X*y", "fortran")
    assert fortran["args"] == ["X", "x", "y"] and fortran["params"] == ["X", "arg1", "y"]
    python = code("numpy + x", "python")
    assert python["params"] == ["arg0", "x"]
    gcc = shutil.which("gcc")
    if gcc is not None:
        (tmp_path / "k.c").write_text(c["source"])
        subprocess.run(
            [gcc, "-std=c99", "-Wall", "-Werror", "-c", "k.c"], cwd=tmp_path, check=True, timeout=60
        )


def test_cse_shrinks_the_kernel_and_can_be_turned_off() -> None:
    det = "det(Matrix([[a, b, c, d], [b, c, d, a], [c, d, a, b], [d, a, b, c]])) * exp(a*b*c*d) + a*b*c*d"
    with_cse, without = code(det, "c"), code(det, "c", cse=False)
    assert with_cse["ops_after"] < with_cse["ops_before"] == without["ops_before"] == without["ops_after"]
    assert "const double t0 = " in with_cse["source"] and "const double" not in without["source"]


def test_what_a_language_lacks_is_refused_not_emitted() -> None:
    with pytest.raises(ToolError) as caught:
        code("factorial(x) + gamma(x)", "fortran")
    assert (caught.value.kind, caught.value.rule) == ("invalid", "codegen_unsupported")
    assert "factorial" in caught.value.detail and "gamma" in caught.value.detail
    with pytest.raises(ToolError, match="cannot name a c function"):
        code("x", "c", name="sin")
    with pytest.raises(ToolError, match="args lacks y"):
        code("x + y", "c", args=["x"])
