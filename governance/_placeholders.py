"""Rule ``placeholders`` (strict mode): generated code that is not finished.

In Python artifacts: marker words (TODO, FIXME, XXX, TBD, "placeholder") in
comments and docstrings, TODO/FIXME in any string, ``raise
NotImplementedError``, and functions whose body is only ``pass`` / ``...`` /
a docstring. Abstract methods, ``@overload`` signatures and Protocol members
are declarations, not placeholders, and are exempt. In every other text
artifact the markers are searched line by line.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator

from ._decision import Finding
from ._rules import Matcher, Params, Rule, rule
from ._subjects import Artifact

DEFAULT_COMMENT_MARKERS = (r"\bTODO\b", r"\bFIXME\b", r"\bXXX\b", r"\bTBD\b", r"(?i)\bplaceholder\b")
DEFAULT_STRING_MARKERS = (r"\bTODO\b", r"\bFIXME\b")
DECLARATION_DECORATORS = frozenset({"abstractmethod", "overload", "abstractproperty"})


class PlaceholdersParams(Params):
    #: Searched in comments, docstrings and non-Python text.
    comment_markers: tuple[str, ...] = DEFAULT_COMMENT_MARKERS
    #: Searched in every other string literal of Python code.
    string_markers: tuple[str, ...] = DEFAULT_STRING_MARKERS
    not_implemented: bool = True
    empty_bodies: bool = True


def _decorator_name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _is_declaration(func: ast.FunctionDef | ast.AsyncFunctionDef, in_protocol: bool) -> bool:
    return in_protocol or any(_decorator_name(d) in DECLARATION_DECORATORS for d in func.decorator_list)


def _is_protocol(cls: ast.ClassDef) -> bool:
    bases = (b.value if isinstance(b, ast.Subscript) else b for b in cls.bases)
    return any(_decorator_name(base) == "Protocol" for base in bases)


def _docstring_node(node: ast.AST) -> ast.Constant | None:
    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return None  # a lambda's body is an expression, an if's is not a docstring
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[0].value if isinstance(body[0].value.value, str) else None
    return None


def _is_filler(stmt: ast.stmt) -> bool:
    """``pass``, ``...`` or a bare string."""
    if isinstance(stmt, ast.Pass):
        return True
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and (stmt.value.value is Ellipsis or isinstance(stmt.value.value, str))
    )


def _raises_not_implemented(node: ast.Raise) -> bool:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


class Placeholders(Rule):
    def __init__(self, params: PlaceholdersParams) -> None:
        self.params = params
        self.comment_markers = [Matcher(p) for p in params.comment_markers]
        self.string_markers = [Matcher(p) for p in params.string_markers]

    def artifact(self, artifact: Artifact) -> list[Finding]:
        if not artifact.is_python or isinstance(artifact.tree, SyntaxError):
            return list(self._text(artifact))  # unparsable Python is reported by forbidden_calls
        findings = list(self._bodies(artifact))
        text = artifact.text
        # The token and string scans are the costly part: run them only where a marker occurs at all.
        if self._marker(text, self.comment_markers, artifact.lowered):
            findings += [*self._comments(artifact), *self._strings(artifact, self.comment_markers, docs=True)]
        if self._marker(text, self.string_markers, artifact.lowered):
            findings += self._strings(artifact, self.string_markers, docs=False)
        return sorted(set(findings), key=lambda f: (f.line or 0, f.what))

    @staticmethod
    def _marker(text: str, matchers: list[Matcher], lowered: str | None = None) -> str | None:
        for matcher in matchers:
            match = matcher.search(text, lowered)
            if match:
                return match.group(0)
        return None

    def _text(self, artifact: Artifact) -> Iterator[Finding]:
        for number, line in enumerate(artifact.lines, 1):
            marker = self._marker(line, self.comment_markers)
            if marker:
                yield Finding(file=artifact.path, line=number, what=f"placeholder marker {marker!r}")

    def _comments(self, artifact: Artifact) -> Iterator[Finding]:
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(artifact.text).readline))
        except (tokenize.TokenError, SyntaxError):
            return
        for tok in tokens:
            if tok.type == tokenize.COMMENT and (marker := self._marker(tok.string, self.comment_markers)):
                yield Finding(
                    file=artifact.path, line=tok.start[0], what=f"placeholder marker {marker!r} in a comment"
                )

    def _strings(self, artifact: Artifact, patterns: list[Matcher], *, docs: bool) -> list[Finding]:
        """Markers in docstrings (``docs``) or in the other string literals."""
        docstrings = {id(d) for n in artifact.nodes if (d := _docstring_node(n)) is not None}
        where = "a docstring" if docs else "a string"
        out = []
        for node in artifact.nodes:
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and (id(node) in docstrings) is docs
            ):
                marker = self._marker(node.value, patterns)
                if marker:
                    what = f"placeholder marker {marker!r} in {where}"
                    out.append(Finding(file=artifact.path, line=node.lineno, what=what))
        return out

    def _bodies(self, artifact: Artifact) -> Iterator[Finding]:
        funcs = [n for n in artifact.nodes if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        in_protocol = {
            id(f) for c in artifact.nodes if isinstance(c, ast.ClassDef) and _is_protocol(c) for f in c.body
        }
        declared = {id(f) for f in funcs if _is_declaration(f, id(f) in in_protocol)}
        if self.params.empty_bodies:
            for func in funcs:
                if id(func) not in declared and all(_is_filler(s) for s in func.body):
                    what = f"function {func.name}() has an empty body"
                    yield Finding(file=artifact.path, line=func.lineno, what=what)
        if self.params.not_implemented and "NotImplementedError" in artifact.text:
            for node in artifact.nodes:
                if isinstance(node, ast.Raise) and _raises_not_implemented(node):
                    owner = _enclosing(funcs, node.lineno)
                    if owner is None or id(owner) not in declared:
                        who = f"{owner.name}() " if owner is not None else ""
                        yield Finding(
                            file=artifact.path, line=node.lineno, what=f"{who}raises NotImplementedError"
                        )


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _enclosing(funcs: list[FunctionNode], line: int) -> FunctionNode | None:
    """The innermost function whose lines contain ``line``."""
    around = [f for f in funcs if f.lineno <= line <= (f.end_lineno or f.lineno)]
    return max(around, key=lambda f: f.lineno, default=None)


@rule(
    "placeholders",
    PlaceholdersParams,
    "strict mode: TODO/FIXME/placeholder markers, stubs, NotImplementedError",
)
def _build(params: PlaceholdersParams) -> Rule:
    return Placeholders(params)
