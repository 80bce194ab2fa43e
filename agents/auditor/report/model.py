"""The evidence report as data (pydantic): what both renderings (Markdown, JSON) show.

Everything in a :class:`Report` comes from audit records of one run up to one chain
head; the declaration names that head, the checkpoint covering it, and carries the
report digest and its Ed25519 signature (see :mod:`.sign`).
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

FORMAT: Final = "l9.evidence-report.v1"
Status = Literal["completed", "failed", "incomplete"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RecordView(_Frozen):
    """One audit record as the report shows it. ``kind`` is None when the payload
    cannot be read (redacted or undecodable); ``fields`` are the payload's top-level
    fields as compact JSON, long values cut with an ellipsis."""

    seq: int
    envelope_id: str
    time: str
    source: str
    type: str
    kind: str | None
    causation_id: str | None
    summary: str
    fields: dict[str, str]
    redacted: bool
    payload_hash: str


class FactTable(_Frozen):
    """A table a section shows above its records, computed from their payloads (table v2 on).
    ``code`` names the columns shown verbatim (paths, hashes)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    code: tuple[str, ...] = ()


class Section(_Frozen):
    number: int
    key: str
    title: str
    types: tuple[str, ...]
    records: tuple[RecordView, ...]
    facts: tuple[FactTable, ...] = ()

    @model_serializer(mode="wrap")
    def _without_empty_facts(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``facts`` key when there are none, so reports of table v1 keep their exact bytes."""
        data: dict[str, Any] = handler(self)
        if not self.facts:
            data.pop("facts", None)
        return data


class Failure(_Frozen):
    """A record showing that the run failed, and which rule says so."""

    seq: int
    type: str
    source: str
    reason: str
    summary: str


class Outcome(_Frozen):
    """The run's outcome, derived from the records only (see :func:`.build.derive_outcome`)."""

    status: Status
    statement: str
    failures: tuple[Failure, ...]
    completion_seqs: tuple[int, ...]
    #: Records whose payload could not be examined (redacted or undecodable).
    unexamined_seqs: tuple[int, ...]


class Declaration(_Frozen):
    """What the report was built on, and its signature (empty strings until signed)."""

    entries: int
    first_seq: int
    last_seq: int
    #: SHA-256 over each entry's seq (8 bytes, big-endian) and chain hash, in the report's order
    #: (seq; commit order across several chains).
    entries_digest: str
    redacted_seqs: tuple[int, ...]
    head_seq: int
    head_chain_hash: str
    checkpoint_id: int
    checkpoint_seq: int
    checkpoint_digest: str
    key_id: str = ""
    digest: str = ""
    signature: str = ""
    #: The root of the signed tree head (a version 2 checkpoint) the report was built on, hex;
    #: empty for a report on a version 1 checkpoint (and for reports made before roots were cited).
    tree_head_root: str = ""
    #: How many chains the trail has: with more than one, the records are those under the
    #: tree head, in commit order (see :func:`.build.build_report`).
    chains: int = 1

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``tree_head_root`` when empty and no ``chains`` when 1, so earlier reports keep their bytes."""
        data: dict[str, Any] = handler(self)
        if not self.tree_head_root:
            data.pop("tree_head_root", None)
        if self.chains == 1:
            data.pop("chains", None)
        return data


class Report(_Frozen):
    format: Literal["l9.evidence-report.v1"] = FORMAT
    run_id: str
    generated_at: str
    sections_version: int
    #: Sections 1..10, in order; the outcome and declaration belong to the last one.
    sections: tuple[Section, ...]
    appendix: tuple[RecordView, ...]
    outcome: Outcome
    declaration: Declaration

    def stamp(self) -> Stamp:
        d = self.declaration
        return Stamp(
            format=self.format,
            run_id=self.run_id,
            generated_at=self.generated_at,
            sections_version=self.sections_version,
            head_seq=d.head_seq,
            head_chain_hash=d.head_chain_hash,
            checkpoint_id=d.checkpoint_id,
            checkpoint_digest=d.checkpoint_digest,
            key_id=d.key_id,
            digest=d.digest,
            signature=d.signature,
            tree_head_root=d.tree_head_root,
        )

    def with_signature(self, key_id: str, digest: str, signature: str) -> Report:
        declaration = self.declaration.model_copy(
            update={"key_id": key_id, "digest": digest, "signature": signature}
        )
        return self.model_copy(update={"declaration": declaration})


class Stamp(_Frozen):
    """The machine-readable fields a report file must carry to be verified against the trail."""

    format: Literal["l9.evidence-report.v1"]
    run_id: str = Field(min_length=1)
    generated_at: str
    sections_version: int
    head_seq: int = Field(ge=1)
    head_chain_hash: str
    checkpoint_id: int = Field(ge=1)
    checkpoint_digest: str
    key_id: str
    digest: str
    signature: str
    #: The tree head root the report cites (empty: none, a report on a version 1 checkpoint).
    tree_head_root: str = ""

    @model_serializer(mode="wrap")
    def _without_empty_root(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not self.tree_head_root:
            data.pop("tree_head_root", None)
        return data


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the report digest is taken over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def unsigned_dump(report: Report) -> dict[str, Any]:
    """The report as JSON data without its digest and signature (what the digest covers)."""
    return report.model_dump(mode="json", exclude={"declaration": {"digest", "signature"}})
