"""Compiled kernels: built once with the real Cython + C compiler, kept on disk, agreeing with evalf."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest

from agents.contracts.sympy.errors import ToolError
from agents.contracts.sympy.payloads import Compile, Evaluate, SymPyRequest
from agents.sympy import compiled, evaluate
from agents.sympy.evaluate import COMPILED_MIN_POINTS
from agents.sympy.operations import Job, ToolConfig, execute

if shutil.which("cc") is None and shutil.which("gcc") is None:
    pytest.skip("no C compiler: compiled kernels cannot be built here", allow_module_level=True)
if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
    pytest.skip("no Python headers: compiled kernels cannot be built here", allow_module_level=True)

EXPR = (
    "3*x**4 - 2*x**3 + x*y + 7 + exp(-x**2/2)*cos(3*x) + sin(y)**2"
    " + (x**3 + 2*x*y + 1)/(x**2 + y**2 + 1) + det(Matrix([[x, 1, y], [y, x, 1], [1, y, x]])) + 30"
)
XS = [-1.75, -0.5, 0.125, 0.9, 1.6, 2.2]
YS = [0.3, -1.2, 1.9, 0.05, -0.7, 1.1]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ToolConfig:
    return ToolConfig(kernel_dir=str(tmp_path_factory.mktemp("kernels")), compile_timeout_s=300)


def run(config: ToolConfig, request: SymPyRequest) -> dict[str, Any]:
    return execute(config, Job("run", request))


def test_a_kernel_is_built_once_then_found_on_disk(config: ToolConfig) -> None:
    first = run(config, Compile(expr=EXPR))
    assert first["built"] and first["build_ms"] > 0 and first["args"] == ["x", "y"]
    path = Path(first["path"])
    assert path.exists() and path.parent.name == first["kernel_hash"]
    assert path.name == f"l9k_{first['kernel_hash']}{compiled.SUFFIX}"
    again = run(config, Compile(expr=EXPR.replace("3*x**4", "x**4*3")))  # the same canonical form
    assert (again["built"], again["kernel_hash"], again["path"]) == (
        False,
        first["kernel_hash"],
        first["path"],
    )
    other = run(config, Compile(expr=EXPR, args=["y", "x"]))
    assert other["kernel_hash"] != first["kernel_hash"] and other["params"] == ["y", "x"]
    assert not list(Path(config.kernel_dir or "").glob(".build-*")), "a build directory was left behind"


def test_the_compiled_backend_agrees_with_50_digit_evalf(config: ToolConfig) -> None:
    points = {"x": XS, "y": YS}
    result = run(config, Evaluate(expr=EXPR, points=points, backend="compiled"))
    reference = run(config, Evaluate(expr=EXPR, points=points, backend="evalf", precision=50))
    assert result["backend"] == "compiled"
    for got, exact in zip(result["values"], reference["digits"], strict=True):
        assert abs((mpmath.mpf(got) - mpmath.mpf(exact)) / mpmath.mpf(exact)) <= 1e-12, (got, exact)


def test_auto_uses_a_built_kernel_only_for_many_points_and_when_it_is_faster(config: ToolConfig) -> None:
    run(config, Compile(expr=EXPR))
    few = run(config, Evaluate(expr=EXPR, points={"x": XS, "y": YS}))
    n = COMPILED_MIN_POINTS
    many = run(config, Evaluate(expr=EXPR, points={"x": [0.5] * n, "y": [0.25] * n}))
    unbuilt = run(config, Evaluate(expr="x*y + 1", points={"x": [0.5] * n, "y": [0.25] * n}))
    assert (few["backend"], unbuilt["backend"]) == ("symengine", "symengine")
    expr_hash = execute(config, Job("key", Evaluate(expr=EXPR)))["expr_hash"]
    assert many["backend"] == evaluate._FASTER[expr_hash], "auto must use what the race found faster"
    assert many["expr_hash"] == expr_hash
    single = run(config, Evaluate(expr=EXPR, points={"x": [0.5], "y": [0.25]}))["values"][0]
    assert many["values"] == pytest.approx([single] * n, rel=1e-12)


def test_a_built_kernel_loads_straight_from_its_file(config: ToolConfig) -> None:
    built = run(config, Compile(expr=EXPR))
    kernel = compiled.load_module(built["path"], built["kernel_hash"])
    values = kernel(np.array(XS), np.array(YS))
    expected = run(config, Evaluate(expr=EXPR, points={"x": XS, "y": YS}, backend="compiled"))["values"]
    assert list(values) == expected
    with pytest.raises(ValueError, match="length differs"):
        kernel(np.array(XS), np.array(YS[:3]))


def test_without_a_kernel_directory_compiling_is_refused() -> None:
    with pytest.raises(ToolError) as caught:
        run(ToolConfig(), Compile(expr="x + 1"))
    assert (caught.value.kind, caught.value.rule) == ("invalid", "no_kernel_store")
