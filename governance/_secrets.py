"""Rule ``secrets``: credentials written into an artifact.

Known token formats (PEM private keys, AWS, GitHub, Slack, Google, Stripe) by
pattern, and high-entropy values assigned to names that say what they are
(``password``, ``secret``, ``token``, ``api_key`` ...). A finding never
repeats the secret: it shows four characters and the length.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from collections.abc import Iterator

from ._decision import Finding
from ._rules import Params, Rule, compile_patterns, rule
from ._subjects import Artifact

#: Each starts with literal text where it can: a leading ``\b`` or ``(?i)`` makes ``re`` try
#: every position of the file (~50x slower); a token found inside a longer word still counts.
DEFAULT_PATTERNS = {
    "PEM private key": r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    "AWS access key id": r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])",
    "AWS secret access key": (
        r"[Aa][Ww][Ss]_?[Ss][Ee][Cc][Rr][Ee][Tt]_?[Aa][Cc][Cc][Ee][Ss][Ss]_?[Kk][Ee][Yy]"
        r"[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
    ),
    "GitHub token": r"gh[pousr]_[A-Za-z0-9]{36,255}\b",
    "GitHub fine-grained token": r"github_pat_[A-Za-z0-9_]{60,255}\b",
    "Slack token": r"xox[abposr]-[A-Za-z0-9-]{10,}",
    "Slack webhook": r"https://hooks\.slack\.com/services/T[A-Za-z0-9_]+/B[A-Za-z0-9_]+/[A-Za-z0-9_]+",
    "Google API key": r"AIza[0-9A-Za-z_\-]{35}\b",
    "Stripe live key": r"[rs]k_live_[0-9A-Za-z]{24,}\b",
}
#: A name that says its value is a credential (matched at the end of the name).
DEFAULT_SECRET_NAMES = (
    r"(?i)(?:password|passwd|pwd|passphrase|secret|token|api_?key|access_?key|secret_?key|"
    r"private_?key|client_?secret|credentials?)$"
)
#: Values that are obviously not secrets: references, templates, examples.
DEFAULT_ALLOW_VALUES = (r"^\$\{?[A-Za-z_][A-Za-z0-9_]*\}?$", r"^<[^>]*>$", r"(?i)example|dummy|changeme")
_QUOTED = re.compile(
    r"""(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)["']?\s*[:=]\s*(?P<q>["'])(?P<value>[^"'\s]+)(?P=q)"""
)
_UNQUOTED = re.compile(
    r"""^\s*(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)\s*[:=]\s*(?P<value>[^"'\s#,;]+)\s*$"""
)


class SecretsParams(Params):
    patterns: dict[str, str] = DEFAULT_PATTERNS
    secret_names: str = DEFAULT_SECRET_NAMES
    #: Assigned values at least this long and this random (Shannon bits per character) are secrets.
    min_length: int = 12
    min_entropy: float = 3.0
    allow_values: tuple[str, ...] = DEFAULT_ALLOW_VALUES


def entropy(value: str) -> float:
    """Shannon entropy of ``value`` in bits per character."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def redact(value: str) -> str:
    return f"{value[:4]}... ({len(value)} chars)"


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


class Secrets(Rule):
    def __init__(self, params: SecretsParams) -> None:
        self.params = params
        self.known = list(zip(params.patterns, compile_patterns(list(params.patterns.values())), strict=True))
        self.names = compile_patterns([params.secret_names])[0]
        self.allow = compile_patterns(params.allow_values)

    def artifact(self, artifact: Artifact) -> list[Finding]:
        findings = [*self._known(artifact), *self._assigned(artifact)]
        return sorted(findings, key=lambda f: (f.line or 0, f.what))

    def _known(self, artifact: Artifact) -> Iterator[Finding]:
        text = artifact.text
        for label, pattern in self.known:
            for match in pattern.finditer(text):
                what = f"{label}: {redact(match.group(0))}"
                yield Finding(file=artifact.path, line=_line_of(text, match.start()), what=what)

    def _assigned(self, artifact: Artifact) -> Iterator[Finding]:
        pairs = _python_assignments(artifact) if artifact.nodes else self._text_assignments(artifact)
        for line, name, value in pairs:
            if self._is_secret(name, value):
                what = f"high-entropy value assigned to {name!r}: {redact(value)}"
                yield Finding(file=artifact.path, line=line, what=what)

    @staticmethod
    def _text_assignments(artifact: Artifact) -> Iterator[tuple[int, str, str]]:
        """``name = "value"`` / ``name: value`` lines of a config file, a doc, unparsable Python."""
        unquoted = not artifact.is_python
        for number, line in enumerate(artifact.lines, 1):
            matches = list(_QUOTED.finditer(line))
            if unquoted and not matches and (m := _UNQUOTED.match(line)):
                matches = [m]
            yield from ((number, m["name"], m["value"]) for m in matches)

    def _is_secret(self, name: str, value: str) -> bool:
        p = self.params
        if len(value) < p.min_length or not self.names.search(name.replace("-", "_")):
            return False
        if any(a.search(value) for a in self.allow):
            return False
        return entropy(value) >= p.min_entropy


def _python_assignments(artifact: Artifact) -> Iterator[tuple[int, str, str]]:
    """(line, name, value) of every string constant bound to a name in Python: ``x = "v"``,
    ``self.x: str = "v"``, ``f(x="v")``, ``{"x": "v"}`` -- read from the syntax tree."""
    for node in artifact.nodes:
        if isinstance(node, ast.Assign | ast.AnnAssign) and (value := _str(node.value)) is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                if name:
                    yield node.lineno, name, value
        elif isinstance(node, ast.keyword) and node.arg and (value := _str(node.value)) is not None:
            yield node.value.lineno, node.arg, value
        elif isinstance(node, ast.Dict):
            for key_node, value_node in zip(node.keys, node.values, strict=True):
                key, value = _str(key_node), _str(value_node)
                if key is not None and value is not None:
                    yield value_node.lineno, key, value


def _str(node: ast.AST | None) -> str | None:
    """The value of a string constant, else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


@rule("secrets", SecretsParams, "private keys, token formats and high-entropy credentials in any artifact")
def _build(params: SecretsParams) -> Rule:
    return Secrets(params)
