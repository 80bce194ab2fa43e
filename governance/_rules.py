"""The rule contract and the table of built-in rules.

A rule is configured once from the ``params`` of a policy (validated by its own
pydantic model) and then inspects subjects, returning findings. The engine
stamps each finding with the policy's id and outcome; a rule only says what is
wrong and where.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from ._decision import Finding
from ._subjects import Artifact, ArtifactSet, Request


class Params(BaseModel):
    """Base of every rule's parameters: unknown keys are an error in the policy file."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Rule:
    """Override what applies; the defaults find nothing."""

    def artifact(self, artifact: Artifact) -> list[Finding]:
        return []

    def artifact_set(self, artifacts: ArtifactSet) -> list[Finding]:
        return []

    def request(self, request: Request) -> list[Finding]:
        return []


@dataclass(frozen=True)
class RuleSpec:
    """A built-in rule: its parameter model and how to build it from validated params."""

    params: type[Params]
    build: Callable[[Any], Rule]
    doc: str


RULES: dict[str, RuleSpec] = {}


def rule(
    name: str, params: type[Params], doc: str
) -> Callable[[Callable[[Any], Rule]], Callable[[Any], Rule]]:
    """Register a rule constructor under ``name`` (the ``rule:`` of a policy)."""

    def register(build: Callable[[Any], Rule]) -> Callable[[Any], Rule]:
        if name in RULES:
            raise ValueError(f"rule {name!r} is registered twice")
        RULES[name] = RuleSpec(params, build, doc)
        return build

    return register


def build_rule(name: str, raw: dict[str, Any]) -> Rule:
    """A configured rule; KeyError for an unknown name, ValidationError for bad params."""
    spec = RULES[name]
    return spec.build(spec.params.model_validate(raw))


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Regexes from a policy file, refused early with the offending pattern named."""
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return out


def glob_regex(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of the glob ``patterns`` (use ``fullmatch``; none given: matches nothing)."""
    parts = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(parts) if parts else r"(?!)")


_WORD = re.compile(r"^(?P<ci>\(\?i\))?(?:\\b)?(?P<word>\w+)(?:\\b)?$")


class Matcher:
    """A regex from the policy file, with a fast path for a plain word (``\\bTODO\\b``,
    ``(?i)\\bplaceholder\\b``): a substring test first, since a leading ``\\b`` or ``(?i)``
    makes ``re`` try every position (~50x slower on a 5 kB file)."""

    def __init__(self, pattern: str) -> None:
        self.regex = compile_patterns([pattern])[0]
        word = _WORD.match(pattern)
        self.ci = bool(word and word["ci"])
        self.word = None if word is None else word["word"].lower() if self.ci else word["word"]

    def search(self, text: str, lowered: str | None = None) -> re.Match[str] | None:
        """Like ``regex.search``; ``lowered`` is ``text.lower()`` when the caller has it already."""
        if self.word is not None:
            haystack = (text.lower() if lowered is None else lowered) if self.ci else text
            if self.word not in haystack:
                return None
        return self.regex.search(text)
