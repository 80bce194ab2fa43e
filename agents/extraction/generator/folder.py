"""The extraction folder on disk: written whole or not at all, and its ``extraction_manifest.json``.

:func:`write_folder` writes every file into a hidden sibling
(``.<name>.tmp-<random>``) and renames it into place, so the folder is never
seen half written: a crash before the rename leaves only the sibling (removed
by the next write of the same folder once it is ``STALE_S`` old), and a
redelivered plan writes the same bytes again. A folder already there (the plan
was redelivered after a complete write) is swapped out and removed.

The manifest (format ``l9.extraction/1``; keys sorted, indent 2, a final
newline) holds the locked plan, every planned file with its size, line count
and sha256 (sorted by path), the run and the generation time. A rewrite of the
same run and plan keeps the time it first recorded, so the folder comes out
byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from agents.contracts.extraction.phases import MANIFEST, GeneratedFile
from agents.contracts.extraction.plan import LockedPlan

MANIFEST_FORMAT = "l9.extraction/1"
#: A leftover sibling (``.<name>.tmp-*``/``.old-*``) older than this is from a crashed write.
STALE_S = 600.0
_SWAP_ATTEMPTS = 5


def folder_of(out_dir: str | None, default: Path, name: str) -> Path:
    """``<out_dir or default, made absolute>/<name>``."""
    base = Path(out_dir) if out_dir is not None else default
    return (base.expanduser().resolve() / name).absolute()


def generated_files(plan: LockedPlan, files: Mapping[str, bytes]) -> tuple[GeneratedFile, ...]:
    """Each file of ``files`` (all planned) as ``GeneratedFile``, sorted by path."""
    items = {item.path: item for item in plan.items if item.category != "link"}
    return tuple(
        GeneratedFile(
            path=path,
            agent=items[path].agent,
            kind=items[path].kind,
            size=len(data),
            lines=data.count(b"\n") + (0 if not data or data.endswith(b"\n") else 1),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        for path, data in sorted(files.items())
    )


def manifest_bytes(
    plan: LockedPlan, files: tuple[GeneratedFile, ...], *, run: str, generated_at: str
) -> bytes:
    document = {
        "format": MANIFEST_FORMAT,
        "collection": plan.collection,
        "run": run,
        "plan_hash": plan.hash,
        "generated_at": generated_at,
        "plan": plan.model_dump(mode="json"),
        "files": [f.model_dump(mode="json") for f in files],
    }
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()


def generation_time(folder: Path, *, run: str, plan_hash: str, now: datetime) -> str:
    """The ``generated_at`` of the folder's manifest when it is of this run and plan, else ``now``."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        recorded = None
    if (
        isinstance(recorded, dict)
        and recorded.get("run") == run
        and recorded.get("plan_hash") == plan_hash
        and isinstance(recorded.get("generated_at"), str)
    ):
        return str(recorded["generated_at"])
    return now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_folder(folder: Path, files: Mapping[str, bytes]) -> None:
    """Make ``folder`` hold exactly ``files`` (relative POSIX paths), atomically (see the module)."""
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, folder.name)
    staging = parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    try:
        for relpath, data in files.items():
            target = staging / _checked(relpath)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _install(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked(relpath: str) -> Path:
    path = Path(relpath)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"{relpath!r} is not a relative path inside the extraction folder")
    return path


def _install(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an existing ``folder`` is moved aside first and removed."""
    for _ in range(_SWAP_ATTEMPTS):
        try:
            os.rename(staging, folder)
            return
        except OSError:
            if not folder.exists():
                raise
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex}"
        try:
            os.rename(folder, old)
        except FileNotFoundError:
            continue  # another writer moved it meanwhile
        shutil.rmtree(old, ignore_errors=True)
    raise OSError(f"could not put {folder} in place: it kept coming back ({_SWAP_ATTEMPTS} attempts)")


def _remove_stale(parent: Path, name: str) -> None:
    deadline = time.time() - STALE_S
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for leftover in parent.glob(pattern):
            try:
                if leftover.stat().st_mtime < deadline:
                    shutil.rmtree(leftover, ignore_errors=True)
            except FileNotFoundError:
                continue


__all__ = [
    "MANIFEST_FORMAT",
    "STALE_S",
    "folder_of",
    "generated_files",
    "generation_time",
    "manifest_bytes",
    "write_folder",
]
