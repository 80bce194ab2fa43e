"""Reading an extraction folder for judgement, and checking it is what the generator announced.

:func:`read_folder` takes a ``l9.generate.completed.v1`` payload and returns the
locked plan from the folder's ``extraction_manifest.json``, every listed file
as a :class:`governance.Artifact`, and every integrity problem as a finding of
the policy ``manifest-integrity@1``, naming the file:

* the manifest is missing, unreadable, not JSON, of another format, or its
  SHA-256 is not the envelope's ``manifest_sha256``;
* its ``plan`` fails validation (hash included) or its hash is not ``plan_hash``;
* a file listed in the manifest or the envelope is missing from the other, is
  missing on disk, lies outside the folder, or its SHA-256 differs between the
  disk, the manifest and the envelope;
* a file on disk is listed nowhere (it would escape judgement).

Nothing here needs the bus; the agent runs it in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents.contracts.extraction.phases import MANIFEST, GeneratedFile, GenerationCompleted
from agents.contracts.extraction.plan import LockedPlan
from governance import Artifact, Finding

#: The policy (``id@version``) of the enforcer's own integrity checks.
INTEGRITY_POLICY = "manifest-integrity@1"
MANIFEST_FORMAT = "l9.extraction/1"
#: Files larger than this are not read (size bounds deny far smaller ones).
MAX_READ_BYTES = 64 * 1024 * 1024
#: Left on disk by running the generated code, never listed.
IGNORED_DIRS = frozenset({"__pycache__", ".pytest_cache"})


@dataclass(frozen=True)
class Folder:
    """What was found in an extraction folder: the plan, the files, and what does not add up."""

    root: Path
    plan: LockedPlan | None
    artifacts: tuple[Artifact, ...]
    problems: tuple[Finding, ...]


def problem(file: str, what: str) -> Finding:
    return Finding(file=file, what=what, policy=INTEGRITY_POLICY)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_folder(generated: GenerationCompleted) -> Folder:
    """The folder ``generated`` names, read and checked against it (see the module docstring)."""
    root = Path(generated.folder)
    if not root.is_absolute() or not root.is_dir():
        what = "is not an absolute path" if not root.is_absolute() else "is not a directory"
        return Folder(root, None, (), (problem(generated.folder, f"the extraction folder {what}"),))
    manifest, problems = _manifest(root, generated)
    if manifest is None:
        return Folder(root, None, (), tuple(problems))
    plan = _plan(manifest, generated, problems)
    listed = _listed(manifest, problems)
    artifacts = list(_artifacts(root, listed, generated, problems))
    problems += _unlisted(root, set(listed) | {f.path for f in generated.files})
    return Folder(root, plan, tuple(artifacts), tuple(problems))


def _manifest(root: Path, generated: GenerationCompleted) -> tuple[dict[str, Any] | None, list[Finding]]:
    try:
        data = (root / MANIFEST).read_bytes()
    except OSError as exc:
        return None, [problem(MANIFEST, f"cannot read the manifest: {exc.strerror or exc}")]
    problems = []
    if (actual := sha256(data)) != generated.manifest_sha256:
        what = f"SHA-256 {actual}, the envelope names {generated.manifest_sha256}"
        problems.append(problem(MANIFEST, what))
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, [*problems, problem(MANIFEST, f"not JSON: {exc}")]
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        return None, [*problems, problem(MANIFEST, f"format {found!r}, expected {MANIFEST_FORMAT!r}")]
    return manifest, problems


def _plan(
    manifest: dict[str, Any], generated: GenerationCompleted, problems: list[Finding]
) -> LockedPlan | None:
    try:
        plan = LockedPlan.model_validate(manifest.get("plan"))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(["plan", *(str(p) for p in err["loc"])])
        problems.append(problem(MANIFEST, f"{where}: {str(err['msg']).removeprefix('Value error, ')}"))
        return None
    for name, value in (("plan.hash", plan.hash), ("plan_hash", manifest.get("plan_hash"))):
        if value != generated.plan_hash:
            problems.append(problem(MANIFEST, f"{name} is {value}, the envelope names {generated.plan_hash}"))
    return plan


def _listed(manifest: dict[str, Any], problems: list[Finding]) -> dict[str, GeneratedFile]:
    listed: dict[str, GeneratedFile] = {}
    entries = manifest.get("files")
    if not isinstance(entries, list):
        problems.append(problem(MANIFEST, "files: expected a list of files"))
        return listed
    for i, entry in enumerate(entries):
        try:
            item = GeneratedFile.model_validate(entry)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"])
            problems.append(problem(MANIFEST, f"files[{i}].{field}: {err['msg']}"))
            continue
        listed[item.path] = item
    return listed


def _artifacts(
    root: Path, listed: dict[str, GeneratedFile], generated: GenerationCompleted, problems: list[Finding]
) -> Iterator[Artifact]:
    announced = {f.path: f for f in generated.files}
    for path in sorted(set(announced) - set(listed)):
        problems.append(problem(path, f"in the envelope but not in {MANIFEST}"))
    for path, item in sorted(listed.items()):
        data = _read_inside(root, path, problems)
        if data is None:
            continue
        actual = sha256(data)
        told = announced.get(path)
        if told is None:
            problems.append(problem(path, f"in {MANIFEST} but not in the envelope"))
        elif told.sha256 != item.sha256:
            problems.append(
                problem(path, f"SHA-256 {item.sha256} in {MANIFEST}, {told.sha256} in the envelope")
            )
        if actual != item.sha256:
            problems.append(problem(path, f"SHA-256 on disk {actual}, {MANIFEST} names {item.sha256}"))
        yield Artifact(path=path, content=data, kind=item.kind, agent=item.agent)


def _read_inside(root: Path, path: str, problems: list[Finding]) -> bytes | None:
    """The bytes of ``root/path``, if it is a regular file inside ``root`` (no ``..``, no symlink out)."""
    target = root / path
    try:
        resolved = target.resolve(strict=True)
        if not resolved.is_relative_to(root.resolve()) or Path(path).is_absolute():
            problems.append(problem(path, "lies outside the extraction folder"))
            return None
        if not resolved.is_file():
            problems.append(problem(path, "is not a regular file"))
            return None
        if (size := resolved.stat().st_size) > MAX_READ_BYTES:
            problems.append(problem(path, f"{size} bytes: too large to judge (at most {MAX_READ_BYTES})"))
            return None
        return resolved.read_bytes()
    except OSError as exc:
        problems.append(problem(path, f"cannot read it: {exc.strerror or exc}"))
        return None


def _unlisted(root: Path, known: set[str]) -> list[Finding]:
    """Files on disk that neither the manifest nor the envelope lists."""
    found = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS)
        for name in sorted(files):
            rel = (Path(directory) / name).relative_to(root).as_posix()
            if rel != MANIFEST and rel not in known and not name.endswith(".pyc"):
                found.append(problem(rel, f"on disk but listed in neither {MANIFEST} nor the envelope"))
    return found


__all__ = ["INTEGRITY_POLICY", "MANIFEST_FORMAT", "Folder", "read_folder", "sha256"]
