"""The SymPy tool's requests and replies, registered as envelope payload types.

Requests are ``l9.sympy.<op>.v1`` and travel on the tool stream ``sympy``
(the default one-stream-per-area topology); replies go to the caller's reply
stream. Expressions are always *text* here: only the worker's subprocesses
parse them, with the safe parser. Nothing in this module imports SymPy.

A value that is not a finite real number (``nan``, ``oo``, ``zoo``, an
overflow) is ``None`` in ``EvaluateResult.values``; a complex value has its
imaginary part in ``imag``.

Sizes are bounded here, on the wire, by what the worker would accept anyway: an
expression field holds at most :data:`EXPR_MAX` characters (the parser's limit), lists
are bounded (:data:`EQUATIONS_MAX`, :data:`CSE_EXPRS_MAX`, :data:`ARGS_MAX`,
:data:`POINT_SYMBOLS_MAX`, :data:`POINTS_MAX`) and so is a whole request
(:data:`REQUEST_CHARS_MAX` of expression text, :data:`POINT_VALUES_MAX` values). The raw
lengths are checked before any field is validated, so an oversized request is a
``too_large`` validation error naming the field (the client's ``ToolError``
``invalid.bad_argument``; on the worker an invalid payload, dead-lettered) before any
work is done on its content.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sized
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from annotated_types import MaxLen
from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from envelope import Payload, payload

from .errors import Kind

#: Characters of one expression field: what the parser accepts (``ParserLimits.max_chars``,
#: the default of ``L9_SYMPY_MAX_CHARS``). The models refuse more before anything is parsed.
EXPR_MAX = 2000
#: Expression text of one request, every field together: 64 expressions of the longest.
REQUEST_CHARS_MAX = 64 * EXPR_MAX
#: Equations (and unknowns) of one solve; expressions of one cse; parameters of one kernel.
EQUATIONS_MAX = 64
CSE_EXPRS_MAX = 256
ARGS_MAX = 256
#: Symbols given values in one evaluate; values of one symbol (``L9_SYMPY_MAX_POINTS``'
#: default); values of one request, every symbol together.
POINT_SYMBOLS_MAX = 256
POINTS_MAX = 1_000_000
POINT_VALUES_MAX = 2_000_000
#: Characters of one expression in a reply (a result may be far longer than its request).
RESULT_MAX = 1_000_000
Expr = str


def _as_identifier(value: object) -> object:
    """A name as Python reads identifiers, and so as the parser reads the expression (NFKC:
    the full-width x, U+FF58, is x): a derivative of an expression written in full-width
    letters with respect to a full-width variable is about one symbol, not two."""
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


#: A symbol's name: a letter, then letters, digits or underscores (Unicode letters too), in
#: its NFKC form.
Name = Annotated[str, BeforeValidator(_as_identifier), Field(pattern=r"^[^\W\d_]\w{0,63}$")]
IDENTIFIER = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
Backend = Literal["auto", "evalf", "numpy", "symengine", "compiled"]
Language = Literal["c", "fortran", "python", "cython"]


class SymPyRequest(Payload):
    """Base of every request; ``op`` names the operation (and the cache key's ``{op}``)."""

    op: ClassVar[str] = ""
    #: False: always computed (the result points at something outside the cache).
    cacheable: ClassVar[bool] = True
    #: The fields holding expression text (a string, a list of strings, or None), in order.
    expr_fields: ClassVar[tuple[str, ...]] = ("expr",)

    @property
    def backend_name(self) -> str:
        """The ``{backend}`` of the cache key: how the result is computed."""
        return "sympy"

    def expression_texts(self) -> list[tuple[str, list[str]]]:
        """``[(field, [text, ...]), ...]`` for every expression field (an absent one: ``[]``)."""
        texts: list[tuple[str, list[str]]] = []
        for name in self.expr_fields:
            value = getattr(self, name)
            texts.append((name, [] if value is None else [value] if isinstance(value, str) else list(value)))
        return texts

    def params(self) -> dict[str, object]:
        """Everything but the expression text: what else a result depends on."""
        return self.model_dump(mode="json", exclude=set(self.expr_fields))

    @model_validator(mode="before")
    @classmethod
    def _size_first(cls, data: Any) -> Any:
        """The sizes of the raw input, before any field is validated: a 256 MB request is
        refused on its lengths alone, naming the field, without a look at its content."""
        if isinstance(data, Mapping):
            check_sizes(cls, data)
        return data


def check_sizes(model: type[SymPyRequest], data: Mapping[str, Any]) -> None:
    """PydanticCustomError ``too_large`` for the first field over its bound, or a request over
    :data:`REQUEST_CHARS_MAX` / :data:`POINT_VALUES_MAX` in all: ``len`` of what came, and
    only then an expression's characters (``string_unicode``: a lone surrogate)."""
    for name, field in model.model_fields.items():
        value, limit = data.get(name), _max_length(field.metadata)
        if limit is not None and isinstance(value, Sized) and len(value) > limit:
            unit = "characters" if isinstance(value, str) else "items"
            _too_large(f"{name}: {len(value)} {unit}, over {limit}")
    chars = 0
    for name in model.expr_fields:
        texts = data.get(name)
        items = [texts] if isinstance(texts, str) else texts if isinstance(texts, list | tuple) else []
        for i, text in enumerate(items):
            if not isinstance(text, str):
                continue
            where = name if isinstance(texts, str) else f"{name}.{i}"
            if len(text) > EXPR_MAX:
                _too_large(f"{where}: {len(text)} characters, over {EXPR_MAX}")
            if not isinstance(texts, str):  # pydantic checks a field of its own, not a list item
                _check_encodable(where, text)
            chars += len(text)
    if chars > REQUEST_CHARS_MAX:
        fields = ", ".join(model.expr_fields)
        _too_large(f"{fields}: {chars} characters of expressions in all, over {REQUEST_CHARS_MAX}")
    points = data.get("points")
    if isinstance(points, Mapping):
        _check_points(points)


def _check_points(points: Mapping[Any, Any]) -> None:
    total = 0
    for name, values in points.items():
        n = len(values) if isinstance(values, Sized) else 0
        if n > POINTS_MAX:
            _too_large(f"points.{name}: {n} values, over {POINTS_MAX}")
        total += n
    if total > POINT_VALUES_MAX:
        _too_large(f"points: {total} values in all, over {POINT_VALUES_MAX}")


def _check_encodable(where: str, text: str) -> None:
    """A lone surrogate is no text (a list item would pass pydantic's ``str`` unchecked, then
    fail to encode on the way out): refused as a constrained string field refuses it."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise PydanticCustomError(
            "string_unicode",
            "{where}: a lone surrogate {char} at {at} is not text",
            {"where": where, "char": f"U+{ord(text[exc.start]):04X}", "at": exc.start},
        ) from None


def _max_length(metadata: list[Any]) -> int | None:
    return next((m.max_length for m in metadata if isinstance(m, MaxLen)), None)


def _too_large(message: str) -> NoReturn:
    raise PydanticCustomError("too_large", "{message}", {"message": message})


class _OneExpr(SymPyRequest):
    expr: Expr = Field(max_length=EXPR_MAX)


@payload("l9.sympy.evaluate.v1")
class Evaluate(_OneExpr):
    """Numeric values of ``expr`` at ``points`` (symbol -> values, all of one length)."""

    op: ClassVar[str] = "evaluate"
    points: dict[Name, list[float]] = Field(default_factory=dict, max_length=POINT_SYMBOLS_MAX)
    backend: Backend = "auto"
    #: Significant digits (``evalf``); above 15 the auto backend is ``evalf``.
    precision: int = Field(default=15, ge=1, le=1000)

    @property
    def backend_name(self) -> str:
        return self.backend


@payload("l9.sympy.simplify.v1")
class Simplify(_OneExpr):
    op: ClassVar[str] = "simplify"


@payload("l9.sympy.expand.v1")
class Expand(_OneExpr):
    op: ClassVar[str] = "expand"


@payload("l9.sympy.factor.v1")
class Factor(_OneExpr):
    op: ClassVar[str] = "factor"


@payload("l9.sympy.diff.v1")
class Diff(_OneExpr):
    """d^order expr / d wrt^order; ``wrt`` may be omitted when ``expr`` has one symbol."""

    op: ClassVar[str] = "diff"
    wrt: Name | None = None
    order: int = Field(default=1, ge=1, le=50)


@payload("l9.sympy.integrate.v1")
class Integrate(_OneExpr):
    """Antiderivative, or the definite integral when both bounds are given (as expressions)."""

    op: ClassVar[str] = "integrate"
    wrt: Name | None = None
    expr_fields: ClassVar[tuple[str, ...]] = ("expr", "lower", "upper")
    lower: Expr | None = Field(default=None, max_length=EXPR_MAX)
    upper: Expr | None = Field(default=None, max_length=EXPR_MAX)


@payload("l9.sympy.series.v1")
class Series(_OneExpr):
    """Series of ``expr`` around ``at`` up to (not including) ``wrt**order``."""

    op: ClassVar[str] = "series"
    wrt: Name | None = None
    at: Expr = Field(default="0", max_length=EXPR_MAX)
    order: int = Field(default=6, ge=1, le=100)
    remove_order: bool = False
    expr_fields: ClassVar[tuple[str, ...]] = ("expr", "at")


@payload("l9.sympy.solve.v1")
class Solve(SymPyRequest):
    """Solutions of equations (``Eq(a, b)``, ``a == b``, or an expression meaning ``= 0``)."""

    op: ClassVar[str] = "solve"
    equations: list[Expr] = Field(min_length=1, max_length=EQUATIONS_MAX)
    unknowns: list[Name] = Field(default_factory=list, max_length=EQUATIONS_MAX)
    expr_fields: ClassVar[tuple[str, ...]] = ("equations",)


@payload("l9.sympy.cse.v1")
class Cse(SymPyRequest):
    """Common subexpression elimination, with operation counts before and after."""

    op: ClassVar[str] = "cse"
    exprs: list[Expr] = Field(min_length=1, max_length=CSE_EXPRS_MAX)
    optimizations: Literal["none", "basic"] = "none"
    expr_fields: ClassVar[tuple[str, ...]] = ("exprs",)


@payload("l9.sympy.generate_code.v1")
class GenerateCode(_OneExpr):
    """Source of a function ``name(args...)`` computing ``expr`` in ``language``."""

    op: ClassVar[str] = "generate_code"
    language: Language
    name: str = Field(default="kernel", pattern=IDENTIFIER)
    #: Parameter order; default: the expression's symbols sorted by name.
    args: list[Name] | None = Field(default=None, max_length=ARGS_MAX)
    cse: bool = True

    @property
    def backend_name(self) -> str:
        return self.language


@payload("l9.sympy.compile.v1")
class Compile(_OneExpr):
    """Build (or find on disk) the Cython kernel of ``expr``; indexed as ``sympy:compiled:{hash}``."""

    op: ClassVar[str] = "compile"
    cacheable: ClassVar[bool] = False
    #: Parameter order; default: the expression's symbols sorted by name (what ``evaluate`` uses).
    args: list[Name] | None = Field(default=None, max_length=ARGS_MAX)

    @property
    def backend_name(self) -> str:
        return "cython"


# -- replies -------------------------------------------------------------------------------
class SymPyResult(Payload):
    #: Hash of the canonical form of the request's expressions (``x+y`` and ``y+x`` share it).
    expr_hash: str
    #: True when the result came from the cache.
    cached: bool = False


@payload("l9.sympy.evaluate_result.v1")
class EvaluateResult(SymPyResult):
    backend: Literal["evalf", "numpy", "symengine", "compiled"]
    values: list[float | None]
    imag: list[float | None] | None = None
    #: ``evalf`` above 15 digits: every value in full.
    digits: list[str] | None = None


@payload("l9.sympy.expression_result.v1")
class ExpressionResult(SymPyResult):
    """One expression: the answer of simplify, expand, factor, diff, integrate and series."""

    expr: Expr
    #: ``count_ops`` of the result.
    ops: int


@payload("l9.sympy.solve_result.v1")
class SolveResult(SymPyResult):
    #: One mapping unknown -> value per solution.
    solutions: list[dict[Name, Expr]]


@payload("l9.sympy.cse_result.v1")
class CseResult(SymPyResult):
    replacements: list[tuple[Name, Expr]]
    reduced: list[Expr]
    ops_before: int
    ops_after: int


@payload("l9.sympy.generate_code_result.v1")
class GenerateCodeResult(SymPyResult):
    language: Language
    name: str
    #: Symbols in parameter order, as named in the request.
    args: list[Name]
    #: The parameter names used in the source (a symbol the language cannot spell is renamed).
    params: list[str]
    source: str
    ops_before: int
    ops_after: int


@payload("l9.sympy.violation.v1")
class Violation(Payload):
    """A refused request as workers before governance wiring published it on ``sympy.violations``.

    No longer published: a refusal is now a governance decision caused by the request
    (:mod:`.violations`). Kept registered so trail records of earlier versions still decode.
    """

    kind: Kind
    rule: str
    detail: str
    #: ``line:col`` in the offending expression, when the parser refused it.
    position: str | None = None
    op: str
    requester: str
    request_id: str


@payload("l9.sympy.compile_result.v1")
class CompileResult(SymPyResult):
    kernel_hash: str
    #: The extension module on the worker's disk (``<kernel_dir>/<hash>/l9k_<hash>.so``).
    path: str
    args: list[Name]
    params: list[str]
    build_ms: float
    #: False when the kernel was already built.
    built: bool


#: Which reply model answers each request model.
REPLY_FOR: dict[type[SymPyRequest], type[SymPyResult]] = {
    Evaluate: EvaluateResult,
    Simplify: ExpressionResult,
    Expand: ExpressionResult,
    Factor: ExpressionResult,
    Diff: ExpressionResult,
    Integrate: ExpressionResult,
    Series: ExpressionResult,
    Solve: SolveResult,
    Cse: CseResult,
    GenerateCode: GenerateCodeResult,
    Compile: CompileResult,
}
