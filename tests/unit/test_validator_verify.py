"""Phase 5 (``agents.extraction.validator.verify``): drift, manifests, import cycles, links, governance.

Each test writes a small extraction folder itself (:func:`write_folder`): the
plan of a two-agent collection locked by the real planner, the files, the
per-agent manifests and ``extraction_manifest.json`` as the extraction contract
describes them, then damages it in one way and checks that exactly that damage
is found and named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from agents.extraction import LockedPlan, load_collection, lock
from agents.extraction.validator import findable, folder_files, import_cycles, import_graph, module_of, verify
from bus import Keys

#: the stream key the generated agent computes with the bus of this checkout
JOB_KEY = Keys("t").stream("job")

COLLECTION = """\
system: Alpha Service
module: demo
name: alpha
role: Doubles numbers
rootpath: L9/demo/alpha
governance:
  anchors: [Igor, Compliance]
  escalationpolicy: Escalate to Igor above the limit
  auditscope: [doublings]
cursorinstructions:
  generatefiles: [__init__.py, config.py, governance_bridge.py, test_alpha.py]
  generatedocs: [README.md]
---
system: Beta Service
module: demo
name: beta
role: Doubles numbers through alpha
rootpath: L9/demo/beta
depends_on: {hard: [alpha]}
governance:
  anchors: [Compliance]
cursorinstructions:
  generatefiles: [__init__.py, governance.py, agent.py, test_beta.py]
  linkexisting: [L9/demo/alpha/config.py, bus/keys.py]
streams:
  consumes: [l9.beta.job.v1]
"""
ALPHA_BRIDGE = """\
ANCHORS: tuple[str, ...] = ("Igor", "Compliance")
ESCALATION_POLICY = "Escalate to Igor above the limit"
AUDIT_SCOPE: tuple[str, ...] = ("doublings",)
"""
FILES: dict[str, str] = {
    "code/L9/demo/alpha/__init__.py": '"""Alpha."""\n\nfrom L9.demo.alpha.config import double\n\n'
    '__all__ = ["double"]\n',
    "code/L9/demo/alpha/config.py": "def double(n: int) -> int:\n    return 2 * n\n",
    "code/L9/demo/alpha/governance_bridge.py": ALPHA_BRIDGE,
    "tests/alpha/test_alpha.py": "from L9.demo.alpha import double\n"
    "from L9.demo.alpha.governance_bridge import ANCHORS\n\n\n"
    "def test_double() -> None:\n    assert double(21) == 42\n\n\n"
    "def test_anchors() -> None:\n    assert ANCHORS == ('Igor', 'Compliance')\n",
    "docs/alpha/README.md": "# alpha\n\nDoubles numbers.\n",
    "code/L9/demo/beta/__init__.py": '"""Beta."""\n',
    "code/L9/demo/beta/governance.py": 'ANCHORS = ("Compliance",)\n'
    'ESCALATION_POLICY = ""\nAUDIT_SCOPE = ()\n',
    "code/L9/demo/beta/agent.py": "import bus.keys\n\n"
    "from L9.demo.alpha.config import double\nfrom L9.demo.beta.governance import ANCHORS\n\n\n"
    "def handle(n: int) -> dict[str, object]:\n"
    "    return {'value': double(n), 'anchors': ANCHORS, 'stream': bus.keys.Keys('t').stream('job')}\n",
    "tests/beta/test_beta.py": "from L9.demo.beta.agent import handle\n\n\n"
    "def test_handle() -> None:\n"
    f"    assert handle(2) == {{'value': 4, 'anchors': ('Compliance',), 'stream': {JOB_KEY!r}}}\n",
}
RUN = "0190a0b0-0000-7000-8000-000000000001"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dump(data: object) -> str:
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def write_folder(
    root: Path,
    overrides: Mapping[str, str] | None = None,
    collection: str = COLLECTION,
    name: str = "demo_20261121T093000Z",
) -> tuple[Path, LockedPlan]:
    """An extraction folder of ``collection`` as the generator writes it, ``overrides`` applied.

    ``overrides`` replaces file contents before the manifests are computed, so the folder
    is self-consistent: only what the content itself breaks is wrong.
    """
    plan = lock(load_collection(collection, "demo.yaml"))
    folder = root / name
    contents = {**FILES, **(overrides or {})}
    planned = [i for i in plan.items if i.category in ("file", "doc")]
    assert {i.path for i in planned} == set(contents), "the test files must be exactly the planned ones"
    for path, text in contents.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text)
    records = {i.path: _record(folder, i.path, i.agent, i.kind) for i in planned}
    for item in (i for i in plan.items if i.category == "manifest"):
        own = [records[i.path] for i in plan.items_of(item.agent) if i.path in records]
        entries = sorted(
            ({k: r[k] for k in ("path", "size", "sha256")} for r in own), key=lambda e: str(e["path"])
        )
        (folder / item.path).parent.mkdir(parents=True, exist_ok=True)
        (folder / item.path).write_text(dump({"agent": item.agent, "files": entries}))
        records[item.path] = _record(folder, item.path, item.agent, item.kind)
    write_extraction_manifest(folder, plan, records)
    return folder, plan


def _record(folder: Path, path: str, agent: str, kind: str) -> dict[str, object]:
    data = (folder / path).read_bytes()
    lines = data.count(b"\n")
    return {
        "path": path,
        "agent": agent,
        "kind": kind,
        "size": len(data),
        "lines": lines,
        "sha256": sha(data),
    }


def write_extraction_manifest(folder: Path, plan: LockedPlan, records: Mapping[str, object]) -> None:
    manifest = {
        "format": "l9.extraction/1",
        "collection": plan.collection,
        "run": RUN,
        "plan_hash": plan.hash,
        "generated_at": "2026-11-21T09:30:01Z",
        "plan": plan.model_dump(mode="json"),
        "files": [records[p] for p in sorted(records)],
    }
    (folder / "extraction_manifest.json").write_text(dump(manifest))


def rerecord(folder: Path, plan: LockedPlan, path: str) -> None:
    """Update the extraction manifest's entry of ``path`` to the file's current content."""
    manifest = json.loads((folder / "extraction_manifest.json").read_text())
    records = {r["path"]: r for r in manifest["files"]}
    records[path] = _record(folder, path, records[path]["agent"], records[path]["kind"])
    write_extraction_manifest(folder, plan, records)


def findings(folder: Path, plan: LockedPlan) -> dict[str, object]:
    verified = verify(folder, collection="demo", plan_hash=plan.hash)
    return {
        k: v
        for k, v in verified.model_dump().items()
        if k in ("missing", "extra", "changed", "cycles", "unresolved_links", "broken_governance") and v
    }


# -- an intact folder ------------------------------------------------------------------------------


def test_an_intact_folder_verifies(tmp_path: Path) -> None:
    folder, plan = write_folder(tmp_path)
    verified = verify(folder, collection="demo", plan_hash=plan.hash)
    assert verified.ok, verified
    assert findings(folder, plan) == {}
    assert verified.outcome == (
        "verified: 11 files as planned, no import cycle among 6 modules, 2 links resolved, "
        "2 governance bridges intact"
    )
    assert verified.folder == str(folder) and verified.collection == "demo"


# -- drift -----------------------------------------------------------------------------------------


def test_a_planned_file_missing_is_named_and_breaks_the_link_to_it(tmp_path: Path) -> None:
    folder, plan = write_folder(tmp_path)
    (folder / "code/L9/demo/alpha/config.py").unlink()
    assert findings(folder, plan) == {
        "missing": ("code/L9/demo/alpha/config.py",),
        "unresolved_links": ("beta: L9.demo.alpha.config (agent 'alpha' did not generate it)",),
    }


def test_an_extra_file_is_named_and_byte_code_caches_are_not(tmp_path: Path) -> None:
    folder, plan = write_folder(tmp_path)
    (folder / "code/L9/demo/alpha/extra.py").write_text("X = 1\n")
    (folder / "notes.txt").write_text("hello\n")
    cache = folder / "code/L9/demo/alpha/__pycache__"
    cache.mkdir()
    (cache / "config.cpython-311.pyc").write_bytes(b"\0")
    assert findings(folder, plan) == {"extra": ("code/L9/demo/alpha/extra.py", "notes.txt")}
    assert "code/L9/demo/alpha/__pycache__/config.cpython-311.pyc" not in folder_files(folder)


def test_a_file_edited_after_generation_is_named_by_its_hash(tmp_path: Path) -> None:
    folder, plan = write_folder(tmp_path)
    with (folder / "docs/alpha/README.md").open("a") as fh:
        fh.write("One more line.\n")
    assert findings(folder, plan) == {"changed": ("docs/alpha/README.md",)}


def test_a_per_agent_manifest_disagreeing_is_named_with_the_entry(tmp_path: Path) -> None:
    folder, plan = write_folder(tmp_path)
    path = folder / "manifests/alpha_manifest.json"
    manifest = json.loads(path.read_text())
    entries = {e["path"]: e for e in manifest["files"]}
    entries["code/L9/demo/alpha/config.py"]["sha256"] = "0" * 64
    del entries["docs/alpha/README.md"]
    entries["code/L9/demo/beta/agent.py"] = {
        "path": "code/L9/demo/beta/agent.py",
        "size": 1,
        "sha256": "1" * 64,
    }
    manifest["files"] = sorted(entries.values(), key=lambda e: e["path"])
    path.write_text(dump(manifest))
    rerecord(folder, plan, "manifests/alpha_manifest.json")  # the extraction manifest agrees with it
    assert findings(folder, plan) == {
        "changed": (
            "manifests/alpha_manifest.json: docs/alpha/README.md: not listed",
            "manifests/alpha_manifest.json: code/L9/demo/beta/agent.py: "
            "listed, not a planned file of agent 'alpha'",
            "manifests/alpha_manifest.json: code/L9/demo/alpha/config.py: sha256 differs from "
            "extraction_manifest.json",
        )
    }


def test_the_extraction_manifest_missing_or_of_another_plan_is_named(tmp_path: Path) -> None:
    folder, plan = write_folder(tmp_path)
    other = verify(folder, collection="demo", plan_hash="f" * 64)
    assert not other.ok
    assert other.changed == (
        f"extraction_manifest.json: extraction_manifest.json is of plan {plan.hash}, "
        f"the run locked {'f' * 64}",
    )
    manifest = json.loads((folder / "extraction_manifest.json").read_text())
    manifest["plan"]["order"] = ["beta", "alpha"]
    (folder / "extraction_manifest.json").write_text(dump(manifest))
    tampered = verify(folder, collection="demo")
    assert not tampered.ok and "plan was changed after it was locked" in tampered.changed[0]
    (folder / "extraction_manifest.json").unlink()
    gone = verify(folder, collection="demo")
    assert not gone.ok and gone.missing == ("extraction_manifest.json",)
    assert gone.outcome == "failed: extraction_manifest.json is missing"


# -- import cycles -------------------------------------------------------------------------------


def test_a_two_module_import_cycle_is_reported_as_a_path(tmp_path: Path) -> None:
    folder, plan = write_folder(
        tmp_path,
        {
            "code/L9/demo/alpha/config.py": "from . import governance_bridge\n\n\n"
            "def double(n: int) -> int:\n    return 2 * n\n",
            "code/L9/demo/alpha/governance_bridge.py": "from L9.demo.alpha.config import double\n"
            + ALPHA_BRIDGE,
        },
    )
    assert findings(folder, plan) == {
        "cycles": (("L9.demo.alpha.config", "L9.demo.alpha.governance_bridge", "L9.demo.alpha.config"),)
    }


def test_imports_not_run_at_import_time_form_no_cycle(tmp_path: Path) -> None:
    folder, plan = write_folder(
        tmp_path,
        {
            "code/L9/demo/alpha/config.py": "from typing import TYPE_CHECKING\n\n"
            "if TYPE_CHECKING:\n    from L9.demo.alpha import governance_bridge\n\n\n"
            "def double(n: int) -> int:\n    return 2 * n\n",
            "code/L9/demo/alpha/governance_bridge.py": ALPHA_BRIDGE + "\n\ndef scaled(n: int) -> int:\n"
            "    from L9.demo.alpha.config import double\n\n    return double(n)\n",
        },
    )
    assert findings(folder, plan) == {}


def test_the_import_graph_resolves_relative_and_package_imports() -> None:
    import ast

    trees = {
        "code/P/__init__.py": ast.parse("from .a import f\n"),
        "code/P/a.py": ast.parse("import P.b.c\nfrom .. import elsewhere\n"),
        "code/P/b/__init__.py": ast.parse(""),
        "code/P/b/c.py": ast.parse("from P import a\nfrom ..a import f\n"),
    }
    graph = import_graph(trees)
    assert graph == {"P": ["P.a"], "P.a": ["P.b.c"], "P.b": [], "P.b.c": ["P.a"]}
    assert import_cycles(graph) == [("P.a", "P.b.c", "P.a")]
    assert module_of("code/P/b/__init__.py") == "P.b" and module_of("tests/x/test_a.py") is None


# -- links -----------------------------------------------------------------------------------------


def test_an_unresolvable_link_is_named(tmp_path: Path) -> None:
    collection = COLLECTION.replace("bus/keys.py]", "bus/keys.py, bus/no_such_module.py, json.nope]")
    folder, plan = write_folder(tmp_path, collection=collection)
    assert findings(folder, plan) == {
        "unresolved_links": (
            "beta: bus.no_such_module (not found in L9's environment)",
            "beta: json.nope (not found in L9's environment)",
        )
    }


def test_existing_modules_are_found_without_being_imported() -> None:
    assert findable("bus.keys") and findable("json") and findable("agents.tools.sympy")
    assert not findable("bus.nope") and not findable("json.decoder.nope") and not findable("no_such_top")


# -- governance links ----------------------------------------------------------------------------


def test_a_governance_bridge_whose_anchors_differ_from_the_schema_is_named(tmp_path: Path) -> None:
    bridge = ALPHA_BRIDGE.replace('("Igor", "Compliance")', '("Igor",)')
    folder, plan = write_folder(tmp_path, {"code/L9/demo/alpha/governance_bridge.py": bridge})
    assert findings(folder, plan) == {
        "broken_governance": (
            "alpha: code/L9/demo/alpha/governance_bridge.py: ANCHORS is ('Igor',), "
            "the schema says ('Igor', 'Compliance')",
        )
    }


def test_bridge_names_missing_not_literal_or_not_imported_are_named(tmp_path: Path) -> None:
    folder, plan = write_folder(
        tmp_path,
        {
            "code/L9/demo/beta/governance.py": "import os\n\nANCHORS = tuple(os.environ)\n"
            "AUDIT_SCOPE = ['x']\n",
            "code/L9/demo/beta/agent.py": "from L9.demo.alpha.config import double\n\n\n"
            "def handle(n: int) -> int:\n    return double(n)\n",
        },
    )
    bridge = "beta: code/L9/demo/beta/governance.py"
    assert findings(folder, plan) == {
        "broken_governance": (
            f"{bridge}: ANCHORS is not a literal",
            f"{bridge}: ESCALATION_POLICY is not defined at module level",
            f"{bridge}: AUDIT_SCOPE is ['x'], the schema says ()",
            "beta: code/L9/demo/beta/agent.py does not import L9.demo.beta.governance",
        )
    }
