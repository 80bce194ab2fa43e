"""What a generated file is: its *kind*, and the naming convention that gives one.

A kind names the template that renders a file and says what it is made of:
which schema fields it reads (``inputs``), what the agent must declare for it
to have content (``needs``), where it is placed in the extraction folder
(``area``) and whether an agent may have only one (``single``). A
``generatefiles`` / ``generatedocs`` entry has the kind given explicitly
(``{path: ..., kind: ...}``), or else the one :data:`CONVENTIONS` gives its
file name (first match wins, on the last path part, case-sensitive).
Anything else is unresolvable (see :mod:`.schema`). ``docs/SCHEMA.md``
publishes this table; a unit test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

Kind = Literal[
    "package",
    "main",
    "settings",
    "payloads",
    "agent",
    "governance",
    "kernels",
    "agent_tests",
    "kernel_tests",
    "manifest",
    "readme",
    "architecture",
    "api",
    "configuration",
    "governance_doc",
    "integration",
    "kernels_doc",
    "deployment",
]
#: What a kind needs declared: ``consumes`` (streams.consumes), ``streams`` (consumed or
#: produced types), ``expressions``, ``agent`` (an ``agent`` file planned for the same agent).
Need = Literal["consumes", "streams", "expressions", "agent"]
Area = Literal["code", "tests", "docs"]

_IDENTITY = ("system", "module", "name", "role", "rootpath")


@dataclass(frozen=True, slots=True)
class KindSpec:
    kind: Kind
    extension: str
    area: Area
    inputs: tuple[str, ...]
    needs: tuple[Need, ...] = ()
    #: At most one file of this kind per agent and list (a second one would be a copy).
    single: bool = True
    summary: str = ""

    @property
    def template(self) -> str:
        """The template's file name, e.g. ``agent.py.j2``."""
        return f"{self.kind}{self.extension}.j2"


KINDS: Mapping[str, KindSpec] = {
    s.kind: s
    for s in (
        KindSpec(
            "package",
            ".py",
            "code",
            ("name", "role"),
            single=False,
            summary="package marker; the root one re-exports the agent",
        ),
        KindSpec(
            "main",
            ".py",
            "code",
            ("name",),
            needs=("agent",),
            summary="`python -m` entry point running the agent",
        ),
        KindSpec(
            "settings", ".py", "code", ("name", "memorytopology", "deployment"), summary="pydantic settings"
        ),
        KindSpec(
            "payloads",
            ".py",
            "code",
            ("streams",),
            needs=("streams",),
            summary="a payload model per stream type",
        ),
        KindSpec(
            "agent",
            ".py",
            "code",
            ("name", "streams", "governance", "deployment", "cursorinstructions.linkexisting"),
            needs=("consumes",),
            summary="the Agent subclass: consumes and produces the declared streams",
        ),
        KindSpec(
            "governance", ".py", "code", ("name", "governance"), summary="bridge to the governance anchors"
        ),
        KindSpec(
            "kernels",
            ".py",
            "code",
            ("expressions",),
            needs=("expressions",),
            summary="CSE-optimised kernels",
        ),
        KindSpec(
            "agent_tests",
            ".py",
            "tests",
            ("name", "streams", "memorytopology", "deployment"),
            summary="tests of the wiring: settings, payload types, handlers",
        ),
        KindSpec(
            "kernel_tests",
            ".py",
            "tests",
            ("expressions",),
            needs=("expressions",),
            summary="each kernel against SymPy at sample points",
        ),
        KindSpec(
            "manifest", ".json", "code", ("name", "cursorinstructions"), summary="files with size and sha256"
        ),
        KindSpec("readme", ".md", "docs", (*_IDENTITY, "depends_on", "streams"), summary="overview"),
        KindSpec(
            "architecture",
            ".md",
            "docs",
            ("name", "depends_on", "integration", "memorytopology", "streams"),
            summary="dependencies, memory layers, data flow",
        ),
        KindSpec(
            "api", ".md", "docs", ("name", "streams"), needs=("streams",), summary="consumed/produced types"
        ),
        KindSpec(
            "configuration", ".md", "docs", ("name", "memorytopology", "deployment"), summary="settings"
        ),
        KindSpec(
            "governance_doc",
            ".md",
            "docs",
            ("name", "governance"),
            summary="anchors, escalation, audit scope",
        ),
        KindSpec(
            "integration",
            ".md",
            "docs",
            ("name", "integration", "depends_on", "streams", "cursorinstructions.linkexisting"),
            summary="how other agents use this one",
        ),
        KindSpec(
            "kernels_doc", ".md", "docs", ("name", "expressions"), needs=("expressions",), summary="formulas"
        ),
        KindSpec(
            "deployment", ".md", "docs", ("name", "deployment"), summary="replicas, concurrency, endpoints"
        ),
    )
}

#: File name pattern -> kind, first match wins.
CONVENTIONS: tuple[tuple[str, Kind], ...] = (
    ("test_kernels.py", "kernel_tests"),
    ("test_*.py", "agent_tests"),
    ("__init__.py", "package"),
    ("__main__.py", "main"),
    ("config.py", "settings"),
    ("settings.py", "settings"),
    ("payloads.py", "payloads"),
    ("agent.py", "agent"),
    ("*_controller.py", "agent"),
    ("governance.py", "governance"),
    ("governance_bridge.py", "governance"),
    ("kernels.py", "kernels"),
    ("manifest.json", "manifest"),
    ("*_manifest.json", "manifest"),
    ("README.md", "readme"),
    ("ARCHITECTURE.md", "architecture"),
    ("API.md", "api"),
    ("API_SPEC.md", "api"),
    ("STREAMS.md", "api"),
    ("CONFIG.md", "configuration"),
    ("CONFIGURATION.md", "configuration"),
    ("SETTINGS.md", "configuration"),
    ("GOVERNANCE.md", "governance_doc"),
    ("INTEGRATION.md", "integration"),
    ("INTEGRATION_GUIDE.md", "integration"),
    ("KERNELS.md", "kernels_doc"),
    ("DEPLOYMENT.md", "deployment"),
)
DOCUMENT_KINDS = frozenset(k for k, s in KINDS.items() if s.extension == ".md")


def kind_by_convention(path: str) -> Kind | None:
    """The kind the naming convention gives ``path`` (its last part), or None."""
    base = path.rsplit("/", 1)[-1]
    for pattern, kind in CONVENTIONS:
        if fnmatchcase(base, pattern):
            return kind
    return None


def missing_need(spec: KindSpec, declared: set[Need]) -> str | None:
    """Why ``spec`` has no content with what the agent ``declared`` (None: it has)."""
    for need in spec.needs:
        if need not in declared:
            return _NEED_TEXT[need]
    return None


_NEED_TEXT: Mapping[Need, str] = {
    "consumes": "the agent consumes no stream (streams.consumes is empty)",
    "streams": "the agent declares no streams",
    "expressions": "the agent declares no expressions",
    "agent": "the agent has no agent module (agent.py or *_controller.py)",
}

__all__ = [
    "CONVENTIONS",
    "DOCUMENT_KINDS",
    "KINDS",
    "Area",
    "Kind",
    "KindSpec",
    "Need",
    "kind_by_convention",
    "missing_need",
]
