"""Rule ``placeholders`` (strict mode): markers, stubs and NotImplementedError; and the strict-mode switch."""

from __future__ import annotations

import textwrap

import pytest

from governance import Artifact, Finding, Outcome, PolicyEngine, parse_policy_text
from governance._rules import Matcher, build_rule

RULE = build_rule("placeholders", {})


def scan(source: str, path: str = "gen/mod.py") -> list[Finding]:
    return RULE.artifact(Artifact(path, textwrap.dedent(source)))


@pytest.mark.parametrize(
    ("source", "line", "what"),
    [
        ("x = 1  # TODO: real value\n", 1, "'TODO' in a comment"),
        ("x = 1\n# FIXME later\n", 2, "'FIXME' in a comment"),
        ("# XXX\n", 1, "'XXX' in a comment"),
        ("# this is a Placeholder until the schema says more\n", 1, "'Placeholder' in a comment"),
        ('def f():\n    """TBD."""\n    return 1\n', 2, "'TBD' in a docstring"),
        ('"""Module: placeholder text."""\n', 1, "'placeholder' in a docstring"),
        ('def f():\n    return "TODO"\n', 2, "'TODO' in a string"),
        ("def f():\n    pass\n", 1, "function f() has an empty body"),
        ("def f():\n    ...\n", 1, "function f() has an empty body"),
        ('def f():\n    """Does things."""\n', 1, "function f() has an empty body"),
        ('async def f():\n    """Doc."""\n    pass\n', 1, "function f() has an empty body"),
        ("class A:\n    def run(self):\n        pass\n", 2, "function run() has an empty body"),
        ("def f():\n    raise NotImplementedError\n", 2, "f() raises NotImplementedError"),
        (
            "def f(x):\n    if x:\n        return 1\n    raise NotImplementedError('later')\n",
            4,
            "raises NotImplementedError",
        ),
        ("raise NotImplementedError\n", 1, "raises NotImplementedError"),
    ],
)
def test_placeholders_are_found_with_their_line(source: str, line: int, what: str) -> None:
    found = scan(source)
    assert any(f.line == line and what in f.what for f in found), found


@pytest.mark.parametrize(
    "source",
    [
        "def f(x):\n    return x * 2\n",
        'def f():\n    """Return one."""\n    return 1\n',
        "class Error(Exception):\n    pass\n",  # an exception class with no body is an idiom, not a stub
        "from abc import ABC, abstractmethod\nclass A(ABC):\n    @abstractmethod\n    def run(self): ...\n",
        "import abc\nclass A(abc.ABC):\n    @abc.abstractmethod\n    def run(self):\n"
        "        raise NotImplementedError\n",
        "from typing import overload\n@overload\ndef f(x: int) -> int: ...\ndef f(x):\n    return x\n",
        "from typing import Protocol\nclass P(Protocol):\n    def run(self) -> None: ...\n",
        "from typing import Protocol, TypeVar\nT = TypeVar('T')\n"
        "class P(Protocol[T]):\n    def get(self) -> T: ...\n",
        "def __eq__(self, other):\n    return NotImplemented\n",
        "try:\n    import x\nexcept ImportError:\n    pass\n",
        "note = 'the todo list app'\n",  # lower-case 'todo' in data is a word, not a marker
        "mask = 'XXX-XXX'\n",  # XXX in ordinary strings is data
        "anchor = '#section'\n",
        "key = lambda item: str(item)\nif key:\n    'a plain string, not a docstring'\n",
    ],
)
def test_finished_code_has_no_findings(source: str) -> None:
    assert scan(source) == []


def test_hash_inside_a_string_is_not_a_comment() -> None:
    assert scan("pattern = '# TODO is how we mark work'\n") != []  # a string with TODO is still flagged
    assert scan("pattern = '# see the docs'\n") == []


def test_text_artifacts_are_searched_line_by_line() -> None:
    found = RULE.artifact(Artifact("docs/usage.md", "# Usage\n\nStep one.\nTODO: write step two\n"))
    assert [(f.file, f.line) for f in found] == [("docs/usage.md", 4)]
    assert RULE.artifact(Artifact("docs/usage.md", "# Usage\n\nAll done.\n")) == []


def test_markers_are_configurable() -> None:
    rule = build_rule("placeholders", {"comment_markers": [r"\bWIP\b"], "string_markers": []})
    assert [f.line for f in rule.artifact(Artifact("a.py", "x = 1  # WIP\ny = 2  # TODO\n"))] == [1]


def test_bad_marker_regex_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="bad regular expression"):
        build_rule("placeholders", {"comment_markers": ["(unclosed"]})


POLICY = """
policies:
  - id: no-placeholders@1
    rule: placeholders
    match: {kinds: ["*"]}
  - id: forbidden-calls@1
    rule: forbidden_calls
    match: {kinds: [python]}
"""


@pytest.mark.parametrize(("strict", "outcome"), [(True, Outcome.DENY), (False, Outcome.ALLOW)])
def test_strict_mode_switches_the_placeholder_policies(strict: bool, outcome: Outcome) -> None:
    engine = PolicyEngine(parse_policy_text(POLICY), strict_mode=strict)
    decision = engine.evaluate(Artifact("a.py", "def f():\n    pass  # TODO\n"))
    assert decision.outcome is outcome
    assert ("no-placeholders@1" in decision.policies) is strict
    # forbidden calls are not strict mode: they deny either way
    assert engine.evaluate(Artifact("a.py", "eval(x)\n")).denied


@pytest.mark.parametrize(
    ("pattern", "text", "found"),
    [
        (r"\bTODO\b", "x  # TODO later", "TODO"),
        (r"\bTODO\b", "TODOS and xTODO are words", None),  # the fast path keeps the boundaries
        (r"(?i)\bplaceholder\b", "A Placeholder here", "Placeholder"),
        (r"(?i)\bplaceholder\b", "placeholders", None),
        (r"TO+DO", "TOOODO", "TOOODO"),  # not a plain word: the regex alone
    ],
)
def test_marker_matcher_fast_path_agrees_with_the_regex(pattern: str, text: str, found: str | None) -> None:
    match = Matcher(pattern).search(text)
    assert (match.group(0) if match else None) == found
