"""Numeric evaluation of a parsed expression at many points: ``evalf``, numpy, symengine.

* ``evalf``: arbitrary precision, one point at a time (the reference; slow).
* ``numpy``: ``lambdify`` to vectorised numpy (hundreds to 100,000x faster than evalf).
* ``symengine``: ``Lambdify`` (faster again, no compile step); not every function converts.
* ``compiled``: a Cython kernel (:mod:`.compiled`), built on first use and kept on disk.

``auto`` picks ``evalf`` above double precision; the compiled kernel when one
is already built, there are at least ``COMPILED_MIN_POINTS`` points and it
beat symengine on a sample (timed once per expression and worker); otherwise
symengine, falling back to numpy, then evalf, when a backend cannot handle the
expression. Callables are kept per (expression hash, backend), so repeated requests skip
building them. Runs only in the worker subprocesses.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import symengine
import sympy

from agents.contracts.sympy.errors import ToolError

from .compiled import KernelStore

Vectorised = Callable[[Sequence[np.ndarray]], np.ndarray]
DOUBLE_DIGITS = 15
#: Below this many points a compiled kernel is not worth its call overhead over symengine.
COMPILED_MIN_POINTS = 10_000
#: Points timed to decide, once per expression, whether its kernel beats symengine.
CALIBRATION_POINTS = 10_000
#: expression hash -> the faster of "compiled" and "symengine" for it, in this worker.
_FASTER: dict[str, str] = {}
_CALLABLES: OrderedDict[tuple[str, str], Vectorised] = OrderedDict()
_CALLABLES_MAX = 256
#: Points without a finite value that a double-precision backend's answer is checked at.
RECHECKED_POINTS = 64
#: Never "this backend failed": the worker is out of memory (a C extension that cannot
#: allocate often returns NULL without an exception: a SystemError); the pool replaces it.
_OUT_OF_MEMORY = (MemoryError, SystemError)


@dataclass(frozen=True)
class Values:
    backend: str
    real: list[float | None]
    imag: list[float | None] | None = None
    digits: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "values": self.real, "imag": self.imag, "digits": self.digits}


def evaluate(
    expr: Any,
    points: Mapping[str, Sequence[float]],
    backend: str,
    precision: int,
    key: str,
    max_points: int,
    store: KernelStore | None = None,
) -> Values:
    """``expr`` at every point; ``key`` (the canonical hash) names the cached callable."""
    if not isinstance(expr, sympy.Expr):
        raise ToolError("invalid", "not_numeric", f"{type(expr).__name__} has no numeric value")
    free = sorted(expr.free_symbols, key=lambda s: s.name)
    arrays = _arrays(free, points, max_points)
    symbols = free or [sympy.Dummy("unused")]  # a constant still gets one value per point
    if backend == "evalf" or (backend == "auto" and precision > DOUBLE_DIGITS):
        return _evalf(expr, symbols, arrays, precision)
    if backend == "compiled" or (backend == "auto" and _compiled_pays(store, expr, free, arrays, key)):
        return _compiled(store, expr, free, arrays, key)
    if backend != "auto":
        return _vectorised(backend, expr, symbols, arrays, key)
    for candidate in ("symengine", "numpy"):
        try:
            return _vectorised(candidate, expr, symbols, arrays, key)
        except ToolError:
            continue  # this backend cannot do it: the next one may
    return _evalf(expr, symbols, arrays, precision)


def _compiled_pays(
    store: KernelStore | None, expr: Any, free: list[Any], arrays: list[np.ndarray], key: str
) -> bool:
    """A built kernel, many points, and faster here than symengine (timed once per expression)."""
    names = [s.name for s in free]
    if store is None or len(arrays[0]) < COMPILED_MIN_POINTS or not store.exists(key, names):
        return False
    faster = _FASTER.get(key)
    if faster is None:
        faster = _FASTER[key] = _race(store, expr, free, arrays, key)
    return faster == "compiled"


def _race(store: KernelStore, expr: Any, free: list[Any], arrays: list[np.ndarray], key: str) -> str:
    """Which of the compiled kernel and symengine evaluates a sample of the points faster."""
    sample = [np.ascontiguousarray(a[:CALIBRATION_POINTS]) for a in arrays[: len(free)]]
    kernel = store.load(expr, [s.name for s in free], key)
    try:
        lambdified = _callable("symengine", expr, free, key)
    except ToolError:
        return "compiled"
    compiled_s = _best_of_3(lambda: kernel(*sample))
    symengine_s = _best_of_3(lambda: lambdified(sample))
    return "compiled" if compiled_s < symengine_s else "symengine"


def _best_of_3(run: Callable[[], object]) -> float:
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _compiled(
    store: KernelStore | None, expr: Any, free: list[Any], arrays: list[np.ndarray], key: str
) -> Values:
    if store is None:
        raise ToolError("invalid", "no_kernel_store", "this worker has no directory for compiled kernels")
    kernel = store.load(expr, [s.name for s in free], key)
    n = len(arrays[0])
    try:
        out = np.asarray(kernel(*[np.ascontiguousarray(a) for a in arrays[: len(free)]]))
    except _OUT_OF_MEMORY:
        raise
    except Exception as exc:
        raise ToolError("invalid", "backend_failed", f"compiled: {type(exc).__name__}: {exc}") from None
    values = _values("compiled", np.broadcast_to(out, (n,)))
    _check_non_finite("compiled", values, expr, free or [sympy.Dummy("unused")], arrays)
    return values


def _arrays(symbols: list[Any], points: Mapping[str, Sequence[float]], max_points: int) -> list[np.ndarray]:
    missing = [s.name for s in symbols if s.name not in points]
    if missing:
        raise ToolError("invalid", "missing_values", f"no values for {', '.join(missing)}")
    arrays = [np.asarray(points[s.name], dtype=np.float64) for s in symbols]
    lengths = {len(a) for a in arrays} or {max((len(v) for v in points.values()), default=1)}
    if len(lengths) > 1:
        raise ToolError("invalid", "points_shape", f"value lists of different lengths {sorted(lengths)}")
    n = lengths.pop()
    if n > max_points:
        raise ToolError("limit", "max_points", f"{n} points exceed {max_points}")
    return arrays or [np.zeros(n)]


def _evalf(expr: Any, symbols: list[Any], arrays: list[np.ndarray], precision: int) -> Values:
    n = len(arrays[0])
    real: list[float | None] = []
    imag: list[float | None] = []
    digits: list[str] = []
    for i in range(n):
        subs = {s: sympy.Float(float(a[i]), precision) for s, a in zip(symbols, arrays, strict=False)}
        try:
            value = expr.evalf(precision, subs=subs)
            re_part, im_part = value.as_real_imag()
        except (ValueError, ArithmeticError):  # a pole: mpmath raises where SymPy would say zoo
            value, re_part, im_part = sympy.nan, sympy.nan, sympy.S.Zero
        real.append(_finite(re_part))
        imag.append(_finite(im_part) if real[-1] is not None else 0.0)
        digits.append(str(value))
    has_imag = any(v != 0 for v in imag)
    return Values("evalf", real, imag if has_imag else None, digits if precision > DOUBLE_DIGITS else None)


def _finite(part: Any) -> float | None:
    if not part.is_number or part.is_finite is not True:
        return None
    value = float(part)
    return value if math.isfinite(value) else None


def _vectorised(backend: str, expr: Any, symbols: list[Any], arrays: list[np.ndarray], key: str) -> Values:
    function = _callable(backend, expr, symbols, key)
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(function(arrays))
    except _OUT_OF_MEMORY:
        raise
    except Exception as exc:
        raise ToolError("invalid", "backend_failed", f"{backend}: {type(exc).__name__}: {exc}") from None
    out = np.broadcast_to(out.reshape(-1) if out.size == len(arrays[0]) else out, (len(arrays[0]),))
    values = _values(backend, out)
    _check_non_finite(backend, values, expr, symbols, arrays)
    return values


def _check_non_finite(
    backend: str, values: Values, expr: Any, symbols: list[Any], arrays: list[np.ndarray]
) -> None:
    """A point where a double-precision backend has no finite value (null) must have none:
    a pole, or a value beyond doubles. A value it lost on the way (``9**1000 / 7**1000``:
    two overflows, one finite quotient) is an error, so ``auto`` goes on to the next backend
    and a backend asked for by name does not answer null for a number. Up to
    :data:`RECHECKED_POINTS` such points are evaluated again with ``evalf``."""
    lost = [i for i, v in enumerate(values.real) if v is None][:RECHECKED_POINTS]
    if not lost:
        return
    reference = _evalf(expr, symbols, [a[lost] for a in arrays], DOUBLE_DIGITS)
    for at, value in zip(lost, reference.real, strict=True):
        if value is not None:
            raise ToolError(
                "invalid",
                "backend_lost_value",
                f"{backend}: no finite value at point {at} (a double overflowed on the way) where "
                f"evalf gives {value!r}; use backend evalf",
            )


def _values(backend: str, out: np.ndarray) -> Values:
    if np.iscomplexobj(out):
        re_part, im_part = out.real, out.imag
        imag = [v if math.isfinite(v) else None for v in im_part.tolist()] if np.any(im_part != 0) else None
    else:
        re_part, imag = out.astype(np.float64, copy=False), None
    real = [v if math.isfinite(v) else None for v in re_part.tolist()]
    return Values(backend, real, imag)


def _callable(backend: str, expr: Any, symbols: list[Any], key: str) -> Vectorised:
    cached = _CALLABLES.get((key, backend))
    if cached is not None:
        _CALLABLES.move_to_end((key, backend))
        return cached
    build = _BUILDERS.get(backend)
    if build is None:
        raise ToolError("invalid", "unknown_backend", f"no backend {backend!r}")
    try:
        function = build(expr, symbols)
    except _OUT_OF_MEMORY:
        raise
    except Exception as exc:
        raise ToolError("invalid", "backend_unsupported", f"{backend}: {type(exc).__name__}: {exc}") from None
    _CALLABLES[(key, backend)] = function
    if len(_CALLABLES) > _CALLABLES_MAX:
        _CALLABLES.popitem(last=False)
    return function


def _numpy(expr: Any, symbols: list[Any]) -> Vectorised:
    # dummify: a symbol named like something in the numpy namespace cannot shadow it
    # cse: a 35,000-operation determinant evaluates 14x faster (and builds 5x faster)
    function = sympy.lambdify(symbols, expr, modules="numpy", dummify=True, cse=True)
    return lambda arrays: function(*arrays)  # a function numpy lacks fails here: NameError


def _symengine(expr: Any, symbols: list[Any]) -> Vectorised:
    converted = symengine.sympify(expr)
    args = [symengine.Symbol(s.name) for s in symbols]
    real = expr.is_real is True or not expr.has(sympy.I)
    function = symengine.Lambdify(args, [converted], real=real, cse=True)
    return lambda arrays: function(np.column_stack(arrays))


_BUILDERS: dict[str, Callable[[Any, list[Any]], Vectorised]] = {"numpy": _numpy, "symengine": _symengine}
