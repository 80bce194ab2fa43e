"""What the templates see: the locked plan as views, one per agent, derived once and deterministically.

Everything here is a pure function of the plan (and of the kernels' checked
code): names of generated classes and settings, the stream each type travels
on (``bus.DEFAULT_TOPOLOGY``), who in the collection produces and consumes each
type, the memory layers as settings fields. Every collection is a tuple in a
fixed order (the schema's, or sorted), never a set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agents.contracts.extraction.plan import LockedPlan, PlanItem
from agents.contracts.extraction.schema import AgentSchema, Deployment, Governance
from bus import DEFAULT_TOPOLOGY

from ..check import RESERVED_KERNEL_NAMES, kernel_name_problem
from .kernel_code import KernelCode
from .pysource import camel

#: The relay bound of a generated agent (its ``max_hops`` setting) unless the environment says otherwise.
DEFAULT_MAX_HOPS = 4


class PlanContextError(ValueError):
    """The plan asks for something the generator cannot write without inventing it."""


#: A valid value and a refused one of each scalar field type, as the generated tests use them.
_SAMPLES: dict[str, tuple[object, object]] = {
    "str": ("sample", 12345),
    "int": (3, "three"),
    "float": (0.5, "a half"),
    "bool": (True, "yes"),
    "datetime": ("2026-01-02T03:04:05Z", "not a time"),
}


@dataclass(frozen=True)
class FieldView:
    """One declared field of a typed message (``streams.fields``)."""

    name: str
    #: The canonical type as written in the schema (``list[str] | None``): also its Python annotation.
    annotation: str

    @property
    def optional(self) -> bool:
        return self.annotation.endswith(" | None")

    @property
    def scalar(self) -> str:
        return self.annotation.removesuffix(" | None").removeprefix("list[").removesuffix("]")

    @property
    def is_list(self) -> bool:
        return self.annotation.startswith("list[")

    @property
    def sample(self) -> object:
        """A value the field accepts (JSON: a datetime as ISO text)."""
        value = _SAMPLES[self.scalar][0]
        return [value] if self.is_list else value

    @property
    def wrong(self) -> object:
        """A value the field refuses."""
        value = _SAMPLES[self.scalar][1]
        return [value] if self.is_list else value


@dataclass(frozen=True)
class TypeView:
    """One envelope type: its stream, its model's class name, who produces and consumes it."""

    type: str
    stream: str
    class_name: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    #: Its declared fields, sorted by name; none: an open payload.
    fields: tuple[FieldView, ...] = ()

    @property
    def typed(self) -> bool:
        return bool(self.fields)

    @property
    def sample(self) -> dict[str, object]:
        """A payload the type's model accepts."""
        return {f.name: f.sample for f in self.fields}


@dataclass(frozen=True)
class SettingView:
    """One field of a generated settings class."""

    name: str
    annotation: str
    default: object
    doc: str

    @property
    def env(self) -> str:
        return self.name.upper()


@dataclass(frozen=True)
class LayerView:
    name: str
    storagetype: str
    settings: tuple[SettingView, ...]


@dataclass(frozen=True)
class LinkView:
    entry: str
    module: str
    #: The agent of the collection that plans it (None: an existing module).
    owner: str | None


@dataclass(frozen=True)
class AgentView:
    schema: AgentSchema
    items: tuple[PlanItem, ...]
    wave: int
    consumes: tuple[TypeView, ...]
    produces: tuple[TypeView, ...]
    #: Every type the agent's payload models cover: its own and the others on the streams it consumes.
    known: tuple[TypeView, ...]
    layers: tuple[LayerView, ...]
    links: tuple[LinkView, ...]
    kernels: tuple[KernelCode, ...]
    #: Module of each planned single code kind (``agent``, ``payloads``, ``settings`` ...).
    modules: Mapping[str, str] = field(default_factory=dict)
    #: Path of the first planned file of each kind.
    paths: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def package(self) -> str:
        return self.schema.package

    @property
    def class_name(self) -> str:
        base = camel(self.name)
        return base if base.endswith("Agent") and base != "Agent" else base + "Agent"

    @property
    def settings_class(self) -> str:
        return camel(self.name) + "Settings"

    @property
    def env_prefix(self) -> str:
        return f"L9_{self.name.upper()}_"

    @property
    def governance(self) -> Governance:
        return self.schema.governance

    @property
    def deployment(self) -> Deployment:
        return self.schema.deployment

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams the agent's consumer group reads, sorted."""
        return tuple(sorted({t.stream for t in self.consumes}))

    @property
    def settings_fields(self) -> tuple[SettingView, ...]:
        return (*_deployment_fields(self.deployment), *(s for layer in self.layers for s in layer.settings))

    @property
    def settings_defaults(self) -> dict[str, object]:
        return {s.name: s.default for s in self.settings_fields}

    @property
    def symbols(self) -> tuple[str, ...]:
        """Every kernel argument, sorted."""
        return tuple(sorted({a for k in self.kernels for a in k.args}))

    @property
    def typed(self) -> tuple[TypeView, ...]:
        """The known types with declared fields."""
        return tuple(t for t in self.known if t.typed)

    @property
    def open_types(self) -> tuple[TypeView, ...]:
        """The known types with an open payload."""
        return tuple(t for t in self.known if not t.typed)

    def sample_input(self, symbols: tuple[str, ...]) -> dict[str, object]:
        """An input of an open type for the generated tests: a number for each kernel symbol, a
        valid value for each field of the typed types it produces (the first type declaring a
        name gives its value), and ``note``, a field nothing reads."""
        sample: dict[str, object] = {s: round(0.15 + 0.1 * (i % 8), 2) for i, s in enumerate(symbols)}
        for type_ in self.produces:
            for f in type_.fields:
                sample.setdefault(f.name, f.sample)
        sample.setdefault("note", "kept as it came")
        return sample

    def sample_fits(self, symbols: tuple[str, ...]) -> bool:
        """Whether :meth:`sample_input` gives every typed produced type a valid value of each field."""
        sample = self.sample_input(symbols)
        return all(
            sample[f.name] == f.sample or (f.annotation in ("float", "float | None") and f.name in symbols)
            for type_ in self.produces
            for f in type_.fields
        )

    @property
    def field_imports(self) -> tuple[str, ...]:
        """Imports the typed payload models need beyond the open ones."""
        uses_datetime = any(f.scalar == "datetime" for t in self.typed for f in t.fields)
        return ("from datetime import datetime",) if uses_datetime else ()

    def has(self, kind: str) -> bool:
        return kind in self.paths

    def items_of(self, *categories: str) -> tuple[PlanItem, ...]:
        return tuple(i for i in self.items if i.category in categories)


@dataclass(frozen=True)
class PlanView:
    plan: LockedPlan
    agents: Mapping[str, AgentView]

    @property
    def collection(self) -> str:
        return self.plan.collection

    @property
    def generated_packages(self) -> frozenset[str]:
        """Top-level packages of the generated modules (their imports go in their own block)."""
        return frozenset(a.package.split(".")[0] for a in self.agents.values())


def plan_view(plan: LockedPlan, kernels: Mapping[str, Mapping[str, KernelCode]]) -> PlanView:
    """The views of every agent of ``plan``; ``kernels`` by agent, then kernel name."""
    produced, consumed = _who(plan)
    fields = declared_fields(plan.agents)
    agents = {
        schema.name: _agent_view(plan, schema, produced, consumed, fields, kernels.get(schema.name, {}))
        for schema in plan.agents
    }
    return PlanView(plan=plan, agents=agents)


def declared_fields(agents: tuple[AgentSchema, ...]) -> dict[str, tuple[FieldView, ...]]:
    """The fields of every typed type of the collection, sorted by name (the first declaration wins:
    :func:`..check.message_errors` refuses a collection whose agents disagree)."""
    found: dict[str, tuple[FieldView, ...]] = {}
    for schema in agents:
        for type_, declared in schema.streams.fields.items():
            views = tuple(FieldView(name, declared[name]) for name in sorted(declared))
            found.setdefault(type_, views)
    return found


def _who(plan: LockedPlan) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    produced: dict[str, list[str]] = {}
    consumed: dict[str, list[str]] = {}
    for schema in plan.agents:
        for type_ in schema.streams.produces:
            produced.setdefault(type_, []).append(schema.name)
        for type_ in schema.streams.consumes:
            consumed.setdefault(type_, []).append(schema.name)
    return produced, consumed


def _agent_view(
    plan: LockedPlan,
    schema: AgentSchema,
    produced: Mapping[str, list[str]],
    consumed: Mapping[str, list[str]],
    fields: Mapping[str, tuple[FieldView, ...]],
    kernels: Mapping[str, KernelCode],
) -> AgentView:
    items = tuple(i for i in plan.items_of(schema.name) if i.category != "link")
    streams = {DEFAULT_TOPOLOGY.stream_for(t) for t in schema.streams.consumes}
    mates = {t for t in (*produced, *consumed) if DEFAULT_TOPOLOGY.stream_for(t) in streams}
    known_types = sorted({*schema.streams.consumes, *schema.streams.produces, *mates})
    views = _type_views(known_types, produced, consumed, fields)
    _check_kernel_names(schema, kernels)
    return AgentView(
        schema=schema,
        items=items,
        wave=next((i.wave for i in items), 0),
        consumes=tuple(views[t] for t in schema.streams.consumes),
        produces=tuple(views[t] for t in schema.streams.produces),
        known=tuple(views[t] for t in known_types),
        layers=_layers(schema),
        links=tuple(
            LinkView(i.path, i.module or "", i.link_to)
            for i in plan.items_of(schema.name)
            if i.category == "link"
        ),
        kernels=tuple(kernels[name] for name in sorted(kernels)),
        modules={i.kind: i.module for i in reversed(items) if i.module and _single(i, schema)},
        paths={i.kind: i.path for i in reversed(items)},
    )


def _single(item: PlanItem, schema: AgentSchema) -> bool:
    """A code file of a kind an agent has one of (the root package: the one at the rootpath)."""
    return item.kind != "package" or item.module == schema.package


def _type_views(
    types: list[str],
    produced: Mapping[str, list[str]],
    consumed: Mapping[str, list[str]],
    fields: Mapping[str, tuple[FieldView, ...]],
) -> dict[str, TypeView]:
    taken: set[str] = set()
    views: dict[str, TypeView] = {}
    for type_ in types:
        name = base = camel(type_.removeprefix("l9."))
        n = 1
        while name in taken:
            n += 1
            name = f"{base}Alt{n}"
        taken.add(name)
        views[type_] = TypeView(
            type=type_,
            stream=DEFAULT_TOPOLOGY.stream_for(type_),
            class_name=name,
            producers=tuple(produced.get(type_, ())),
            consumers=tuple(consumed.get(type_, ())),
            fields=fields.get(type_, ()),
        )
    return views


def _layers(schema: AgentSchema) -> tuple[LayerView, ...]:
    layers = []
    for name, layer in schema.memorytopology.layers():
        if "storage" in layer.settings:
            raise PlanContextError(
                f"agent '{schema.name}': memorytopology.{name}.settings.storage would be the setting"
                f" {name}_storage, which holds the layer's storagetype: rename it"
            )
        fields = [SettingView(f"{name}_storage", "str", layer.storagetype, f"{name}: its store")]
        for key in sorted(layer.settings):
            value = layer.settings[key]
            fields.append(SettingView(f"{name}_{key}", type(value).__name__, value, f"{name}.settings.{key}"))
        layers.append(LayerView(name, layer.storagetype, tuple(fields)))
    return tuple(layers)


def _deployment_fields(deployment: Deployment) -> tuple[SettingView, ...]:
    return (
        SettingView("replicas", "int", deployment.replicas, "deployment.replicas: processes to run"),
        SettingView(
            "concurrency", "int", deployment.concurrency, "deployment.concurrency: handlers in flight"
        ),
        SettingView("endpoints", "tuple[str, ...]", deployment.endpoints, "deployment.endpoints"),
        SettingView(
            "max_hops",
            "int",
            DEFAULT_MAX_HOPS,
            "relay bound: an input whose hop count reaches it is handled but not relayed",
        ),
        SettingView(
            "signing_key_id",
            "str | None",
            None,
            "key id it signs with when run by its __main__ (None: L9_SIGNING_KEY_ID)",
        ),
    )


def _check_kernel_names(schema: AgentSchema, kernels: Mapping[str, KernelCode]) -> None:
    for name in sorted(kernels):
        if kernel_name_problem(name) is not None:
            raise PlanContextError(
                f"agent '{schema.name}': expression '{name}' cannot name a Python function"
                f" (a keyword, a builtin, or one of {', '.join(sorted(RESERVED_KERNEL_NAMES))})"
            )


__all__ = [
    "DEFAULT_MAX_HOPS",
    "AgentView",
    "FieldView",
    "LayerView",
    "LinkView",
    "PlanContextError",
    "PlanView",
    "SettingView",
    "TypeView",
    "declared_fields",
    "plan_view",
]
