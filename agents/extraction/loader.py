"""Reading a schema collection into a :class:`Collection`, or every error in it at once.

Three inputs are accepted:

* multi-document YAML, one agent per document (``---`` between them);
* a YAML list of agents (in one or several documents);
* Markdown whose fenced ```` ```yaml ```` (or ``yml``) blocks hold the agents, each block
  being YAML as above; prose and other fenced blocks are ignored.

A ``.md`` / ``.markdown`` file is Markdown and a ``.yaml`` / ``.yml`` file is YAML;
any other name is Markdown when it has a ```` ```yaml ```` fence. Parsing keeps
PyYAML's node tree (pure-Python ``SafeLoader``, so messages are the same on
every machine) to point each error at its line: malformed YAML (and the
documents after it in that block are lost), a document that is not an agent,
a key written twice, every schema violation of every agent (pydantic's
``loc`` walked down the node tree), then across agents: a name declared
twice, a hard dependency on an unknown agent, a rootpath shared by two agents.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import structlog
import yaml
from pydantic import ValidationError

from agents.contracts.extraction.collection import (
    AgentSource,
    Collection,
    ErrorCode,
    Loc,
    SchemaError,
    SchemaErrors,
    child_node,
    content_hash,
    field_text,
    located_error,
)
from agents.contracts.extraction.schema import AgentSchema, LocatedError, field_names

log = structlog.get_logger("l9.extraction.loader")
Format = Literal["yaml", "markdown"]
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
_YAML_INFO = frozenset({"yaml", "yml"})
#: Most YAML nodes one agent may expand to (aliases can make a small text a huge or endless tree).
MAX_NODES = 20_000


def load_file(path: Path) -> Collection:
    """The collection in ``path`` (UTF-8); SchemaErrors names the file by its name."""
    return load_collection(path.read_text(encoding="utf-8"), str(path))


def load_collection(text: str, origin: str = "collection.yaml") -> Collection:
    """Parse and validate ``text``; ``origin`` is its file name (format and error messages)."""
    collection, errors = read_collection(text, origin)
    if errors:
        log.info("collection.invalid", origin=origin, errors=len(errors))
        raise SchemaErrors(errors)
    return collection


def read_collection(text: str, origin: str = "collection.yaml") -> tuple[Collection, list[SchemaError]]:
    """The agents of ``text`` that are valid, and every error found (none: the whole collection)."""
    reader = _Reader(PurePosixPath(origin).name or origin)
    fmt = detect_format(text, origin)
    blocks = reader.markdown_blocks(text) if fmt == "markdown" else [(text, 1)]
    sources = [source for block, first in blocks for source in reader.agent_nodes(block, first)]
    valid = [(source, schema) for source in sources if (schema := reader.validate(source)) is not None]
    reader.cross_check(sources)
    if not sources and not reader.errors:
        reader.fail(1, "empty", "the collection declares no agent")
    named: dict[str, tuple[AgentSource, AgentSchema]] = {}
    for source, schema in valid:  # a name declared twice is an error above; the first one is kept
        named.setdefault(schema.name, (source, schema))
    collection = Collection(
        origin=origin,
        content_hash=content_hash(text),
        format=fmt,
        agents=tuple(schema for _, schema in named.values()),
        sources={name: source for name, (source, _) in named.items()},
    )
    return collection, reader.errors


def detect_format(text: str, origin: str) -> Format:
    suffix = PurePosixPath(origin).suffix.lower()
    if suffix in (".md", ".markdown"):
        return "markdown"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    fences = (_FENCE.match(line) for line in text.splitlines())
    return "markdown" if any(m and m["info"].lower() in _YAML_INFO for m in fences) else "yaml"


def raw_name(node: yaml.Node) -> str | None:
    """The ``name`` an agent mapping gives itself, valid or not (to label its errors)."""
    value = child_node(node, "name")
    if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":str") and value.value.strip():
        return str(value.value)
    return None


class _Reader:
    """Collects the errors of one collection while reading it."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[SchemaError] = []
        self._count = 0

    def fail(self, line: int, code: ErrorCode, message: str, source: AgentSource | None = None) -> None:
        agent = raw_name(source.node) if source else None
        index = source.index if source else None
        self.errors.append(SchemaError(self.file, line, code, message, agent=agent, index=index))

    def fail_at(
        self, source: AgentSource, loc: Loc, code: ErrorCode, message: str, line: int | None = None
    ) -> None:
        agent = raw_name(source.node)
        self.errors.append(located_error(self.file, source, code, message, loc=loc, agent=agent, line=line))

    # -- documents -----------------------------------------------------------------------------------

    def markdown_blocks(self, text: str) -> list[tuple[str, int]]:
        """The fenced YAML blocks of a Markdown text: (content, file line of its first line)."""
        blocks: list[tuple[str, int]] = []
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            opening = _FENCE.match(lines[i])
            if opening is None:
                i += 1
                continue
            end = _closing(lines, i + 1, opening["fence"])
            is_yaml = opening["info"].lower() in _YAML_INFO
            if end is None and is_yaml:
                self.fail(i + 1, "yaml", f"the {opening['fence']}{opening['info']} block is never closed")
            elif is_yaml:
                blocks.append(("\n".join(lines[i + 1 : end]) + "\n", i + 2))
            i = len(lines) if end is None else end + 1
        if not blocks and not self.errors:
            self.fail(1, "empty", "the Markdown file has no ```yaml block")
        return blocks

    def agent_nodes(self, text: str, first_line: int) -> Iterator[AgentSource]:
        """The agent mappings of a YAML text, each document a mapping or a list of them."""
        try:
            for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
                yield from self._agents_of(document, first_line)
        except yaml.YAMLError as exc:
            self.fail(*_yaml_problem(exc, first_line))

    def _agents_of(self, document: yaml.Node | None, first_line: int) -> Iterator[AgentSource]:
        if document is None:
            return
        items = document.value if isinstance(document, yaml.SequenceNode) else [document]
        for node in items:
            if isinstance(node, yaml.MappingNode):
                yield AgentSource(node, first_line, index=self._next_index())
            else:
                what = "a list" if isinstance(node, yaml.SequenceNode) else f"the scalar {node.value!r}"
                line = first_line + node.start_mark.line
                self.fail(line, "document", f"expected an agent (a mapping) or a list of agents, not {what}")

    def _next_index(self) -> int:
        self._count += 1
        return self._count

    # -- one agent -----------------------------------------------------------------------------------

    def validate(self, source: AgentSource) -> AgentSchema | None:
        """The agent's schema, or None after recording why it is invalid."""
        if _expanded_size(source.node) > MAX_NODES:
            message = (
                f"expands to more than {MAX_NODES} YAML nodes (aliases repeating or containing themselves)"
            )
            self.fail(source.first_line + source.node.start_mark.line, "yaml", message, source=source)
            return None
        for path, first, again in _repeated_keys(source.node, ()):
            lines = (source.first_line + first.start_mark.line, source.first_line + again.start_mark.line)
            message = f"is written twice (first at line {lines[0]})"
            self.fail_at(source, (*path, again.value), "duplicate_key", message, line=lines[1])
        try:
            data = yaml.SafeLoader("").construct_document(source.node)
        except yaml.YAMLError as exc:
            self.fail(*_yaml_problem(exc, source.first_line), source=source)
            return None
        try:
            return AgentSchema.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                self._schema_violation(source, err)
            return None

    def _schema_violation(self, source: AgentSource, err: Any) -> None:
        loc: Loc = tuple(p for p in err["loc"] if p != "[key]")
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, LocatedError):
            self.fail_at(source, (*loc, *cause.loc), "invalid", str(cause))
            return
        field = field_text(loc)
        message = _message(err, loc)
        self.errors.append(
            SchemaError(
                self.file,
                source.line_of(loc),
                "invalid",
                f"{field}: {message}" if field else message,
                agent=raw_name(source.node),
                index=source.index,
                field=field or None,
            )
        )

    # -- across agents -------------------------------------------------------------------------------

    def cross_check(self, sources: list[AgentSource]) -> None:
        """Names declared twice, hard dependencies on unknown agents, shared rootpaths.

        Read from the YAML nodes, so that an agent with other errors is checked too.
        """
        first_of: dict[str, AgentSource] = {}
        for source in sources:
            name = raw_name(source.node)
            if name is not None and name in first_of:
                line = first_of[name].line_of(("name",))
                message = f"'{name}' is declared twice (first at line {line})"
                self.fail_at(source, ("name",), "duplicate_agent", message)
            elif name is not None:
                first_of[name] = source
        for source in sources:
            for i, dep in enumerate(_scalars(source.node, "depends_on", "hard")):
                if dep and dep not in first_of:
                    message = f"names unknown agent '{dep}'{_suggest(dep, first_of)}"
                    self.fail_at(source, ("depends_on", "hard", i), "unknown_dependency", message)
        self._shared_rootpaths(sources)

    def _shared_rootpaths(self, sources: list[AgentSource]) -> None:
        owner: dict[str, str] = {}
        for source in sources:
            root, name = _scalar(source.node, "rootpath"), raw_name(source.node)
            if root is None or name is None:
                continue
            other = owner.setdefault(root, name)
            if other != name:
                message = f"'{root}' is also the rootpath of agent '{other}'"
                self.fail_at(source, ("rootpath",), "duplicate_rootpath", message)


def _scalar(node: yaml.Node, key: str) -> str | None:
    value = child_node(node, key)
    return str(value.value) if isinstance(value, yaml.ScalarNode) and value.value else None


def _scalars(node: yaml.Node, *path: str) -> list[str]:
    """The scalar items of the list at ``path`` (non-scalars as '', to keep indexes)."""
    target: yaml.Node | None = node
    for key in path:
        target = child_node(target, key) if target is not None else None
    if not isinstance(target, yaml.SequenceNode):
        return []
    return [str(item.value) if isinstance(item, yaml.ScalarNode) else "" for item in target.value]


def _closing(lines: list[str], start: int, fence: str) -> int | None:
    for j in range(start, len(lines)):
        stripped = lines[j].strip()
        if stripped.startswith(fence) and set(stripped) == {fence[0]}:
            return j
    return None


def _yaml_problem(exc: yaml.YAMLError, first_line: int) -> tuple[int, ErrorCode, str]:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    line = first_line + (mark.line if mark is not None else 0)
    if context and context_mark is not None and context_mark.line != getattr(mark, "line", None):
        problem = f"{problem} ({context} started at line {first_line + context_mark.line})"
    elif context:
        problem = f"{problem} ({context})"
    return line, "yaml", f"malformed YAML: {problem}"


def _expanded_size(node: yaml.Node) -> int:
    """How many nodes the tree holds with every alias expanded, counting no further than the limit."""
    count, todo = 0, [node]
    while todo and count <= MAX_NODES:
        current = todo.pop()
        count += 1
        if isinstance(current, yaml.MappingNode):
            todo.extend(v for pair in current.value for v in pair)
        elif isinstance(current, yaml.SequenceNode):
            todo.extend(current.value)
    return count


def _repeated_keys(node: yaml.Node, path: Loc) -> Iterator[tuple[Loc, yaml.Node, yaml.ScalarNode]]:
    """``(path of the mapping, first key node, repeated key node)`` for every key written twice."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    yield path, seen[key.value], key
                seen.setdefault(key.value, key)
                yield from _repeated_keys(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _repeated_keys(item, (*path, i))


def _message(err: Any, loc: Loc) -> str:
    kind, message = err["type"], str(err["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden" and loc:
        known = field_names(loc[:-1])
        return f"is not a field of the schema{_suggest(str(loc[-1]), known)}"
    return message


def _suggest(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


__all__ = ["Format", "detect_format", "load_collection", "load_file", "raw_name", "read_collection"]
