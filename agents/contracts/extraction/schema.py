"""The v6 agent schema of a schema collection, plus the L9 extensions.

A *schema collection* describes an ecosystem of agents, one YAML mapping per
agent (see :mod:`.loader` for the accepted file formats). Every agent has:

* ``system`` (its human-readable name, e.g. ``TensorAIOS Core Service``),
  ``module`` (its category, e.g. ``core``), ``role`` (what it does);
* ``name``: its **identifier**, a lowercase ``snake_case`` word. Dependencies
  name agents by it, and it names the generated agent, its consumer group and
  its folders under ``tests/``, ``docs/`` and ``manifests/``;
* ``rootpath``: where its package is generated (``L9/core/tensoraios``), a
  relative path whose parts are Python identifiers, so the package imports as
  ``L9.core.tensoraios``;
* ``depends_on.{hard,soft}``: a hard dependency is generated (and started)
  first and must be an agent of the collection; a soft one only breaks ties in
  the order and may name anything (``governance``, ``memory``);
* ``integration.connectto``, ``governance.{anchors, escalationpolicy,
  auditscope}``, ``memorytopology.{working,episodic,semantic,causal}memory``
  (each ``{storagetype, settings}``), ``deployment`` (replicas, concurrency,
  endpoints);
* ``cursorinstructions.{generatefiles, generatedocs, linkexisting}``: what to
  generate and which existing modules to import;
* the L9 extensions ``streams.{consumes, produces}`` (envelope types
  ``l9.<area>.<name>.v<N>``), ``streams.fields`` (typed messages: type ->
  field -> ``str``, ``int``, ``float``, ``bool``, ``datetime``, ``list[...]`` of
  one, ``... | None``; such a type's payload is closed) and ``expressions``
  (kernel name -> formula text, each becoming a numeric kernel; checked here for syntax only, the SymPy
  worker parses it safely later).

**How a generated file's content is determined.** A ``generatefiles`` or
``generatedocs`` entry is a path (``agent.py``) or a mapping ``{path: ...,
kind: ...}``. Its *kind* names the template that renders it: an explicit
``kind`` wins, otherwise the file name decides by the naming convention of
:data:`agents.contracts.extraction.kinds.CONVENTIONS` (``__init__.py`` -> ``package``,
``config.py`` / ``settings.py`` -> ``settings``, ``agent.py`` /
``*_controller.py`` -> ``agent``, ``kernels.py`` -> ``kernels``, ``test_*.py``
-> ``agent_tests``, ``README.md`` -> ``readme`` ...). An entry that neither
determines (``tensor_scorer.py``: domain logic the schema does not describe),
or whose kind lacks what it renders (``kernels`` with no ``expressions``), is
*unresolvable*: the planner reports it and strict mode rejects the plan, since
generation never invents domain logic nor writes a placeholder. The full
table is in ``docs/SCHEMA.md``.

Models are frozen and refuse unknown fields, so a typo is an error that names
the field rather than a silently ignored key.
"""

from __future__ import annotations

import ast
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from .kinds import KINDS, Kind

IDENTIFIER = r"^[a-z][a-z0-9_]{0,63}$"
#: Anchor names as the governance policy file spells them (``Igor``, ``Compliance``).
ANCHOR = r"^[A-Za-z][A-Za-z0-9 _.-]{0,63}$"
_IDENTIFIER_RE = re.compile(IDENTIFIER)
_ANCHOR_RE = re.compile(ANCHOR)
#: An envelope type with at least an area and a name (stricter than the envelope's own pattern).
_TYPE_RE = re.compile(r"^l9(\.[a-z0-9_]+){2,}\.v[0-9]+$")
_PY_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
FORMULA_MAX = 2000
#: The scalar types a typed message's field may have (``datetime``: ISO 8601 text on the wire).
FIELD_SCALARS = ("str", "int", "float", "bool", "datetime")
_FIELD_TYPE_RE = re.compile(
    rf"(?P<list>list\[)?(?P<scalar>{'|'.join(FIELD_SCALARS)})(?(list)\])(?P<optional>\|None)?"
)
StorageType = Literal["redis", "redis_cluster", "postgres", "neo4j", "falkordb", "hypergraphdb"]
Scalar = str | int | float | bool


class LocatedError(ValueError):
    """A validator's error about a part of its value: ``loc`` is relative to the validated field."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


def _identifier(value: str) -> str:
    if not _IDENTIFIER_RE.match(value):
        raise ValueError(f"must be a lowercase identifier like 'main_agent' (got {value!r})")
    return value


def _anchor(value: str) -> str:
    if not _ANCHOR_RE.match(value):
        raise ValueError(f"{value!r} is not an anchor name (a letter, then letters, digits, ' _.-')")
    return value


def _envelope_type(value: str) -> str:
    if not _TYPE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not an envelope type l9.<area>.<name>.v<N>")
    return value


def _relative_path(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or any(not _FILE_PART.match(p) or p in (".", "..") for p in parts):
        raise ValueError(f"{value!r} is not a relative path of plain names (no '..', no leading '/')")
    return value


def _rootpath(value: str) -> str:
    if not all(_PY_PART.match(p) for p in value.split("/")):
        raise ValueError(
            f"{value!r} must be a relative path of Python identifiers (e.g. L9/core/tensoraios),"
            " so that the generated package imports"
        )
    return value


def _formula(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty")
    if len(value) > FORMULA_MAX:
        raise ValueError(f"is {len(value)} characters long (at most {FORMULA_MAX})")
    try:
        ast.parse(value.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" (column {exc.offset})" if exc.offset else ""
        raise ValueError(f"is not a formula: {exc.msg}{where}") from None
    return value


def _unique(values: tuple[Any, ...], key: Any = lambda v: v) -> tuple[Any, ...]:
    seen: set[Any] = set()
    for i, value in enumerate(values):
        if key(value) in seen:
            raise LocatedError((i,), f"lists {key(value)!r} twice")
        seen.add(key(value))
    return values


def _field_type(value: str) -> str:
    """A typed message's field type, spelled canonically (``list[str]|None`` -> ``list[str] | None``)."""
    match = _FIELD_TYPE_RE.fullmatch("".join(value.split()))
    if match is None:
        allowed = ", ".join(FIELD_SCALARS)
        raise ValueError(
            f"{value!r} is not a field type: one of {allowed}, list[...] of one, optional with '| None'"
        )
    scalar = match["scalar"]
    text = f"list[{scalar}]" if match["list"] else scalar
    return f"{text} | None" if match["optional"] else text


Identifier = Annotated[str, AfterValidator(_identifier)]
FieldType = Annotated[str, AfterValidator(_field_type)]
AnchorName = Annotated[str, AfterValidator(_anchor)]
EnvelopeType = Annotated[str, AfterValidator(_envelope_type)]
RelativePath = Annotated[str, AfterValidator(_relative_path)]
Formula = Annotated[str, AfterValidator(_formula)]
Text = Annotated[str, Field(min_length=1, max_length=4000)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DependsOn(_Model):
    hard: tuple[Identifier, ...] = ()
    soft: tuple[Identifier, ...] = ()

    @field_validator("hard", "soft")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value)


class Integration(_Model):
    connectto: tuple[Text, ...] = ()


class Governance(_Model):
    anchors: tuple[AnchorName, ...] = Field(min_length=1)
    escalationpolicy: str = ""
    auditscope: tuple[Text, ...] = ()

    @field_validator("anchors")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value)


class MemoryLayer(_Model):
    storagetype: StorageType
    #: Passed to the generated agent's settings as they are (``ttl_s: 3600``).
    settings: dict[Identifier, Scalar] = Field(default_factory=dict)


class MemoryTopology(_Model):
    workingmemory: MemoryLayer | None = None
    episodicmemory: MemoryLayer | None = None
    semanticmemory: MemoryLayer | None = None
    causalmemory: MemoryLayer | None = None

    def layers(self) -> list[tuple[str, MemoryLayer]]:
        """``[(layer name, layer), ...]`` of the declared layers, in schema order."""
        return [(name, layer) for name, layer in self if isinstance(layer, MemoryLayer)]


class FileEntry(_Model):
    """One entry of ``generatefiles`` / ``generatedocs``: a path, and a kind or none (by convention)."""

    path: RelativePath
    kind: Kind | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _extension_fits(self) -> FileEntry:
        if self.kind is not None and not self.path.endswith(ext := KINDS[self.kind].extension):
            raise ValueError(f"kind {self.kind!r} renders a {ext} file, not {self.path!r}")
        return self


class CursorInstructions(_Model):
    generatefiles: tuple[FileEntry, ...] = ()
    generatedocs: tuple[FileEntry, ...] = ()
    #: Existing modules the agent imports: a path (``L9/core/x.py``) or a dotted name (``bus.keys``).
    linkexisting: tuple[Text, ...] = ()

    @field_validator("generatefiles", "generatedocs")
    @classmethod
    def _paths_unique(cls, value: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        return _unique(value, key=lambda e: e.path)

    @field_validator("linkexisting")
    @classmethod
    def _links_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value)


class Deployment(_Model):
    replicas: int = Field(default=1, ge=1, le=1000)
    concurrency: int = Field(default=4, ge=1, le=10_000)
    endpoints: tuple[Text, ...] = ()


class Streams(_Model):
    consumes: tuple[EnvelopeType, ...] = ()
    produces: tuple[EnvelopeType, ...] = ()
    #: Typed messages: the fields of some of the types above (the others keep an open payload).
    fields: dict[EnvelopeType, dict[Identifier, FieldType]] = Field(default_factory=dict)

    @field_validator("consumes", "produces")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value)

    @model_validator(mode="after")
    def _typed_types_are_streamed(self) -> Streams:
        for type_, declared in self.fields.items():
            if type_ not in self.consumes and type_ not in self.produces:
                raise LocatedError(("fields", type_), "is neither consumed nor produced by the agent")
            if not declared:
                raise LocatedError(
                    ("fields", type_), "declares no field (leave the type out to keep it open)"
                )
        return self

    @model_serializer(mode="wrap")
    def _without_empty_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``fields`` key when no type is typed, so plans of untyped collections keep their hash."""
        data: dict[str, Any] = handler(self)
        if not self.fields:
            data.pop("fields", None)
        return data


class AgentSchema(_Model):
    """One agent of a schema collection (v6 fields plus ``streams`` and ``expressions``)."""

    system: Text
    module: Text
    name: Identifier
    role: Text
    rootpath: Annotated[str, AfterValidator(_relative_path), AfterValidator(_rootpath)]
    depends_on: DependsOn = DependsOn()
    integration: Integration = Integration()
    governance: Governance
    memorytopology: MemoryTopology = MemoryTopology()
    cursorinstructions: CursorInstructions
    deployment: Deployment = Deployment()
    streams: Streams = Streams()
    expressions: dict[Identifier, Formula] = Field(default_factory=dict)

    @property
    def package(self) -> str:
        """The dotted name the generated package imports as."""
        return self.rootpath.replace("/", ".")


def field_names(loc: tuple[int | str, ...]) -> list[str]:
    """The field names a model accepts at ``loc`` (a path of field names), for suggestions."""
    model: type[BaseModel] | None = AgentSchema
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return []
        model = _model_of(model.model_fields[part].annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


__all__ = [
    "ANCHOR",
    "FIELD_SCALARS",
    "IDENTIFIER",
    "AgentSchema",
    "CursorInstructions",
    "DependsOn",
    "Deployment",
    "FieldType",
    "FileEntry",
    "Governance",
    "Integration",
    "LocatedError",
    "MemoryLayer",
    "MemoryTopology",
    "StorageType",
    "Streams",
    "field_names",
]
