"""Rules on sizes: ``size_bounds`` for artifacts, ``expression_length`` and
``expression_functions`` for SymPy requests (the seeds escalate both to Igor).

A SymPy request carries its formulas in its data: a string, a list of strings
or a mapping of names to strings under one of the configured ``fields``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from ._decision import Finding
from ._rules import Params, Rule, rule
from ._subjects import Artifact, ArtifactSet, Request

#: Where SymPy requests keep expression text (``agents.contracts.sympy.payloads``: expr, exprs, equations,
#: lower/upper, at), and the names schema collections use.
DEFAULT_FIELDS = (
    "expr", "exprs", "equations", "lower", "upper", "at", "expression", "expressions", "formula", "formulas",
)  # fmt: skip
DEFAULT_DANGEROUS = (
    "eval", "exec", "compile", "__import__", "open", "getattr", "setattr", "delattr", "globals", "locals",
    "vars", "lambda", "lambdify", "sympify", "parse_expr", "import", "os", "sys", "subprocess", "input",
    "breakpoint",
)  # fmt: skip
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_]\w*")
_DUNDER = re.compile(r"__\w+__")
_NUMBER = re.compile(r"(?<![\w.])\d[\d_]*")
_POWER = re.compile(r"\*\*|\^")
_ATOM = re.compile(r"^\s*[-(\s]*[\w.]+[)\s]*$")
_EXPONENT = re.compile(r"\s*\(?\s*(\d[\d_]*)")
_EXPONENT_DIGITS = 18


class SizeBoundsParams(Params):
    max_file_bytes: int = 1_000_000
    max_lines: int = 20_000
    #: Files one agent may produce in one artifact set.
    max_files_per_agent: int = 1_000


class SizeBounds(Rule):
    def __init__(self, params: SizeBoundsParams) -> None:
        self.p = params

    def artifact(self, artifact: Artifact) -> list[Finding]:
        out = []
        if artifact.size > self.p.max_file_bytes:
            out.append(
                Finding(
                    file=artifact.path,
                    what=f"{artifact.size} bytes, over the bound of {self.p.max_file_bytes}",
                )
            )
        if artifact.size > self.p.max_lines and len(artifact.lines) > self.p.max_lines:
            out.append(
                Finding(
                    file=artifact.path,
                    what=f"{len(artifact.lines)} lines, over the bound of {self.p.max_lines}",
                )
            )
        return out

    def artifact_set(self, artifacts: ArtifactSet) -> list[Finding]:
        counts = Counter(a.agent for a in artifacts)
        return [
            Finding(
                what=f"agent {agent!r} produced {n} files, over the bound of {self.p.max_files_per_agent}"
            )
            for agent, n in sorted(counts.items())
            if n > self.p.max_files_per_agent
        ]


class ExpressionParams(Params):
    #: Fields of the request data that hold expressions.
    fields: tuple[str, ...] = DEFAULT_FIELDS


def expressions(data: Mapping[str, Any], fields: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(where, text) of each expression in ``data``: ``expr``, ``expressions[2]``, ``formulas.score``."""
    for name in fields:
        value = data.get(name)
        if isinstance(value, str):
            yield name, value
        elif isinstance(value, list | tuple):
            yield from ((f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str))
        elif isinstance(value, Mapping):
            yield from ((f"{name}.{k}", v) for k, v in value.items() if isinstance(v, str))


class ExpressionLengthParams(ExpressionParams):
    max_chars: int = 2_000


class ExpressionLength(Rule):
    def __init__(self, params: ExpressionLengthParams) -> None:
        self.p = params

    def request(self, request: Request) -> list[Finding]:
        return [
            Finding(what=f"{where}: {len(text)} characters, over max_expression_length {self.p.max_chars}")
            for where, text in expressions(request.data, self.p.fields)
            if len(text) > self.p.max_chars
        ]


class ExpressionFunctionsParams(ExpressionParams):
    dangerous: tuple[str, ...] = DEFAULT_DANGEROUS
    #: A numeric literal with more digits than this (e.g. ``factorial(10**...)`` bombs).
    max_digits: int = 100
    #: ``a**b**c**d`` has a power chain of 3.
    max_power_chain: int = 2
    #: A literal exponent larger than this (``2**100000000``).
    max_exponent: int = 100_000


class ExpressionFunctions(Rule):
    def __init__(self, params: ExpressionFunctionsParams) -> None:
        self.p = params
        self.dangerous = frozenset(params.dangerous)

    def request(self, request: Request) -> list[Finding]:
        out: list[Finding] = []
        for where, text in expressions(request.data, self.p.fields):
            out.extend(Finding(what=f"{where}: {problem}") for problem in self.problems(text))
        return out

    def problems(self, text: str) -> Iterator[str]:
        names = sorted({m.group(0) for m in _IDENTIFIER.finditer(text)} & self.dangerous)
        if names:
            yield f"dangerous function or name {', '.join(names)}"
        dunders = sorted({m.group(0) for m in _DUNDER.finditer(text)} - self.dangerous)
        if dunders:
            yield f"dunder name {', '.join(dunders)}"
        longest = max((len(m.group(0).replace("_", "")) for m in _NUMBER.finditer(text)), default=0)
        if longest > self.p.max_digits:
            yield f"a numeric literal of {longest} digits (max {self.p.max_digits})"
        chain, exponent = power_profile(text)
        if chain > self.p.max_power_chain:
            yield f"a power tower of {chain + 1} levels (max {self.p.max_power_chain + 1})"
        if exponent > self.p.max_exponent:
            yield f"a literal exponent of {exponent} (max {self.p.max_exponent})"


def power_profile(text: str) -> tuple[int, int]:
    """(longest chain of ``**`` operators joined by atoms, largest literal exponent)."""
    pieces = _POWER.split(text)
    chain = longest = biggest = 0
    for i in range(1, len(pieces)):
        chain = chain + 1 if i > 1 and _ATOM.match(pieces[i - 1]) else 1
        longest = max(longest, chain)
        head = _EXPONENT.match(pieces[i])
        if head:
            digits = head.group(1).replace("_", "")
            biggest = max(biggest, int(digits) if len(digits) <= _EXPONENT_DIGITS else 10**_EXPONENT_DIGITS)
    return longest, biggest


@rule("size_bounds", SizeBoundsParams, "file size, line count and files per agent")
def _build_size(params: SizeBoundsParams) -> Rule:
    return SizeBounds(params)


@rule("expression_length", ExpressionLengthParams, "SymPy: expression longer than max_expression_length")
def _build_length(params: ExpressionLengthParams) -> Rule:
    return ExpressionLength(params)


@rule("expression_functions", ExpressionFunctionsParams, "SymPy: dangerous functions, number and power bombs")
def _build_functions(params: ExpressionFunctionsParams) -> Rule:
    return ExpressionFunctions(params)
