"""An extraction folder as the validator reads it: its files, their hashes, its manifests.

The folder holds the planned files and ``extraction_manifest.json`` (see
``agents/contracts/extraction/phases.py`` and the extraction contract): the locked plan
and every file with its size and sha256. :func:`load_manifest` reads and checks
that manifest (the plan's own hash included); :func:`folder_files` lists what
is really on disk, so the two can be compared.

Caches left by running the code (``__pycache__``, ``.pytest_cache``) are not
files of the extraction and are never listed: the validator runs the generated
tests with ``PYTHONDONTWRITEBYTECODE=1`` and no cache provider, but a folder
someone else ran may hold them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agents.contracts.extraction.phases import MANIFEST, GeneratedFile
from agents.contracts.extraction.plan import LockedPlan

MANIFEST_FORMAT = "l9.extraction/1"
#: Left on disk by running the generated code: never files of the extraction.
_CACHE_DIRS = frozenset({"__pycache__", ".pytest_cache"})


class ManifestError(Exception):
    """``extraction_manifest.json`` (or a per-agent manifest) is missing, unreadable or malformed."""


class ExtractionManifest(BaseModel):
    """``extraction_manifest.json``: the locked plan and every generated file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["l9.extraction/1"]
    collection: str
    run: str
    plan_hash: str
    generated_at: str
    plan: LockedPlan
    files: tuple[GeneratedFile, ...]

    def recorded(self) -> dict[str, GeneratedFile]:
        return {f.path: f for f in self.files}


@dataclass(frozen=True, slots=True)
class Recorded:
    """One file entry of a per-agent manifest."""

    path: str
    size: int | None
    sha256: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative POSIX paths, sorted), byte-code caches left out."""
    found: list[str] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in _CACHE_DIRS]
        base = Path(root).relative_to(folder)
        found.extend((base / name).as_posix() for name in files)
    return sorted(found)


def python_files(folder: Path) -> list[str]:
    """Every ``.py`` file of the folder (relative POSIX paths, sorted)."""
    return [p for p in folder_files(folder) if p.endswith(".py")]


def load_manifest(folder: Path) -> ExtractionManifest:
    """The folder's ``extraction_manifest.json``, its plan checked against its hash."""
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{MANIFEST} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{MANIFEST} cannot be read: {exc}") from None
    try:
        manifest = ExtractionManifest.model_validate_json(text)
    except ValidationError as exc:
        raise ManifestError(f"{MANIFEST} is not an extraction manifest: {_first_error(exc)}") from None
    if manifest.plan_hash != manifest.plan.hash:
        raise ManifestError(
            f"{MANIFEST}: plan_hash {manifest.plan_hash} is not the hash of its plan ({manifest.plan.hash})"
        )
    return manifest


def load_agent_manifest(folder: Path, relpath: str) -> dict[str, Recorded]:
    """The entries of a per-agent manifest (``{"files": [{"path", "size", "sha256"}, ...]}``), by path."""
    try:
        data = json.loads((folder / relpath).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{relpath} cannot be read: {exc}") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise ManifestError(f"{relpath} has no 'files' list")
    entries: dict[str, Recorded] = {}
    for i, entry in enumerate(files):
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)):
            raise ManifestError(f"{relpath}: files[{i}] has no path")
        if not isinstance(entry.get("sha256"), str):
            raise ManifestError(f"{relpath}: files[{i}] ({entry['path']}) has no sha256")
        size = entry.get("size")
        entries[entry["path"]] = Recorded(
            entry["path"], size if isinstance(size, int) else None, entry["sha256"]
        )
    return entries


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']}{more}"


__all__ = [
    "MANIFEST_FORMAT",
    "ExtractionManifest",
    "ManifestError",
    "Recorded",
    "folder_files",
    "load_agent_manifest",
    "load_manifest",
    "python_files",
    "sha256_of",
]
