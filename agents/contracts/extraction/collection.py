"""A parsed schema collection, where each part of it was written, and what is wrong with it.

Every error names the file, the line, the agent and the field::

    tensoraios.md:41 agent 'plastos_adapter': depends_on.hard names unknown agent 'main'

The loader and the planner report *all* errors at once as one
:class:`SchemaErrors`. A :class:`Collection` keeps each agent's YAML node, so
the planner can point its own findings (a cycle, an unresolvable file) at the
line that causes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal

import yaml

from .schema import AgentSchema

ErrorCode = Literal[
    "request",
    "yaml",
    "document",
    "duplicate_key",
    "invalid",
    "empty",
    "duplicate_agent",
    "duplicate_rootpath",
    "unknown_dependency",
    "cycle",
    "unresolvable",
    "baseline",
]
Loc = tuple[int | str, ...]


@dataclass(frozen=True, slots=True)
class SchemaError:
    """One thing wrong with a collection; ``message`` starts with the field it is about."""

    file: str
    #: 1-based; 0 when the error is about the whole input (an unreadable file).
    line: int
    code: ErrorCode
    message: str
    agent: str | None = None
    #: 1-based position of the agent in the collection (when its name is unknown).
    index: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        who = f" agent '{self.agent}'" if self.agent else f" agent #{self.index}" if self.index else ""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}{who}: {self.message}"

    def sort_key(self) -> tuple[str, int, str]:
        return (self.file, self.line, self.message)


class SchemaErrors(Exception):
    """Everything wrong with a collection, sorted by file and line."""

    def __init__(self, errors: Iterable[SchemaError]) -> None:
        self.errors = sorted(errors, key=SchemaError.sort_key)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.errors)
        head = f"{n} error{'s' if n != 1 else ''} in the schema collection"
        return "\n  ".join([f"{head}:", *(str(e) for e in self.errors)])


@dataclass(frozen=True, slots=True)
class AgentSource:
    """Where one agent was written: its YAML mapping node and the file line of the node's line 0."""

    node: yaml.Node
    first_line: int
    index: int

    def line_of(self, loc: Loc) -> int:
        """1-based file line of the node at ``loc`` (the deepest one that exists)."""
        node = self.node
        for part in loc:
            child = child_node(node, part)
            if child is None:
                break
            node = child
        return self.first_line + node.start_mark.line


def child_node(node: yaml.Node, part: int | str) -> yaml.Node | None:
    """The value at key ``part`` of a mapping node, or item ``part`` of a sequence node."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]  # type: ignore[no-any-return]
    return None


def field_text(loc: Loc) -> str:
    """``('depends_on', 'hard', 1)`` -> ``depends_on.hard.1``."""
    return ".".join(str(p) for p in loc)


@dataclass(frozen=True)
class Collection:
    """The valid agents of a collection, in the order written, and where each one is."""

    origin: str
    content_hash: str
    format: Literal["yaml", "markdown"]
    agents: tuple[AgentSchema, ...]
    sources: Mapping[str, AgentSource] = field(repr=False)

    @property
    def name(self) -> str:
        """The collection's name: its file name without the suffix (``tensoraios_ecosystem``)."""
        return PurePosixPath(self.origin).stem or "collection"

    @property
    def file(self) -> str:
        """The file name errors are reported with."""
        return PurePosixPath(self.origin).name or self.origin

    def __iter__(self) -> Iterator[AgentSchema]:
        return iter(self.agents)

    def __len__(self) -> int:
        return len(self.agents)

    def agent(self, name: str) -> AgentSchema:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(f"no agent {name!r} in {self.origin}")

    def names(self) -> list[str]:
        return [a.name for a in self.agents]

    def line_of(self, agent: str, loc: Loc = ()) -> int:
        return self.sources[agent].line_of(loc)

    def error(self, agent: str, loc: Loc, code: ErrorCode, message: str) -> SchemaError:
        """An error about ``agent`` at ``loc`` (see :func:`located_error`)."""
        return located_error(self.file, self.sources[agent], code, message, loc=loc, agent=agent)


def located_error(
    file: str,
    source: AgentSource,
    code: ErrorCode,
    message: str,
    *,
    loc: Loc = (),
    agent: str | None = None,
    line: int | None = None,
) -> SchemaError:
    """An error at ``loc`` of an agent, ``message`` prefixed with the field (list indexes left out)."""
    field_ = field_text(tuple(p for p in loc if isinstance(p, str)))
    text = f"{field_} {message}" if field_ else message
    return SchemaError(
        file, line or source.line_of(loc), code, text, agent=agent, index=source.index, field=field_ or None
    )


def content_hash(text: str) -> str:
    """SHA-256 (hex) of the collection text as UTF-8: what an extraction request names."""
    return hashlib.sha256(text.encode()).hexdigest()


__all__ = [
    "AgentSource",
    "Collection",
    "ErrorCode",
    "Loc",
    "SchemaError",
    "SchemaErrors",
    "child_node",
    "content_hash",
    "field_text",
    "located_error",
]
