"""The auditor's reporter: when a run ends, its signed evidence report, from the trail.

Every auditor process also runs a consumer in group ``reporter`` on stream ``run``.
For each ``l9.run.completed.v1``:

1. wait (bounded) until that envelope is committed in the trail, and until the
   ``auditor`` group has committed everything published before it on every stream
   (nothing pending or undelivered up to its entry id), so the report sees the whole run;
2. build and sign the report (section table v2) on a head fixed by the trail: the run's
   last record that is not a report notice (in commit order when the trail has several
   chains), the oldest checkpoint covering it and the records before it (its tree head
   root cited in the declaration), and that record's commit time as the build time;
3. write ``<L9_HOME>/reports/<run>.md`` and ``.json`` (each written to a temporary file,
   then renamed over the old one);
4. emit ``l9.report.ready.v1`` caused by the run's completion, its id derived from the
   completion's as every agent's emits are (``bus.dedupe.derived_id``, scope ``reporter``).

Redelivered (a crash before the ack), the same steps run again: the report is rebuilt on
the same head, so the files get the same bytes, and the notice has the same id, so the
trail keeps one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import anyio
import structlog

from agents.contracts.extraction.phases import ReportReady, RunCompleted
from bus import Delivery, Keys, Publisher, as_text
from bus.connection import RedisClient
from bus.dedupe import derived_id
from bus.index import known_streams
from bus.topology import AUDIT_STREAM
from envelope import PacketEnvelope, registry
from memory.audit import AuditRecorder, Checkpoint, EntryFilter, SigningKey, StoredEntry, commit_order

from .agent import GROUP as AUDITOR_GROUP
from .report import ChainPoint, Report, build_report, render, sign_report

#: The reporter's consumer group and the stream it reads.
GROUP = "reporter"
#: Records of these types are notices about reports, not evidence of the run.
NOTICE_GLOB = "l9.report.*"
#: How long a completion may take to reach the trail before the delivery fails (and is retried).
COMMIT_TIMEOUT_S = 30.0
#: How long to wait for the auditor to catch up with everything published before the completion.
SETTLE_TIMEOUT_S = 15.0
POLL_S = 0.05
#: The notice's result for each report outcome.
RESULT_OF: dict[str, Literal["passed", "failed", "incomplete"]] = {
    "completed": "passed",
    "failed": "failed",
    "incomplete": "incomplete",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
log = structlog.get_logger("l9.auditor.reporter")


class ReportNotReady(Exception):
    """The run's completion is not in the trail yet: the delivery is retried later."""


@dataclass(frozen=True, slots=True)
class Written:
    report: Report
    markdown: Path
    json: Path


def report_name(run: str) -> str:
    """The file name stem of a run's report: the run id, or its hash if it is not a safe name."""
    return run if _SAFE_NAME.fullmatch(run) else "run-" + hashlib.sha256(run.encode()).hexdigest()[:32]


def notice_id(completion_id: str) -> str:
    """The id of the report notice for one completion: the same on every redelivery."""
    return derived_id(completion_id, GROUP, registry.type_of(ReportReady))


def write_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` or its old content, never a part: write a sibling, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def evidence_head(entries: Sequence[StoredEntry]) -> StoredEntry:
    """The run's last record that is evidence (not a report notice); the last one if all are."""
    evidence = [e for e in entries if not fnmatchcase(e.type, NOTICE_GLOB)]
    return (evidence or list(entries))[-1]


async def oldest_covering(store: AuditRecorder, seqs: Sequence[int], key: SigningKey) -> Checkpoint:
    """The first checkpoint covering every entry of ``seqs`` (the same one every time), made if
    there is none."""
    for checkpoint in await store.checkpoints():
        if all(checkpoint.covers(seq) for seq in seqs):
            return checkpoint
    return await store.make_checkpoint(key)


async def auditor_behind(redis: RedisClient, keys: Keys, upto: str) -> list[str]:
    """Streams on which the auditor group has entries up to ``upto`` not yet committed (undelivered
    or pending); an empty list when it has committed everything published until then."""
    behind = []
    for name in sorted(await known_streams(redis, keys)):
        if name == AUDIT_STREAM:
            continue
        key = keys.stream(name)
        groups = (
            {as_text(g["name"]): g for g in await redis.xinfo_groups(key)} if await redis.exists(key) else {}
        )
        group = groups.get(AUDITOR_GROUP)
        start = f"({as_text(group['last-delivered-id'])}" if group else "-"
        undelivered = await redis.xrange(key, start, upto, count=1)
        pending = await redis.xpending_range(key, AUDITOR_GROUP, "-", upto, 1) if group else []
        if undelivered or pending:
            behind.append(name)
    return behind


class Reporter:
    """The handler of the ``reporter`` group (see the module doc)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        store: AuditRecorder,
        publisher: Publisher,
        key: SigningKey,
        reports_dir: Path,
        source: str,
        *,
        commit_timeout_s: float = COMMIT_TIMEOUT_S,
        settle_timeout_s: float = SETTLE_TIMEOUT_S,
    ) -> None:
        self.redis, self.keys, self.store, self.publisher = redis, keys, store, publisher
        self.key, self.reports_dir, self.source = key, reports_dir, source
        self.commit_timeout_s, self.settle_timeout_s = commit_timeout_s, settle_timeout_s

    async def handle(self, delivery: Delivery) -> None:
        if not isinstance(delivery.payload, RunCompleted):
            return
        completion = delivery.envelope
        run = completion.correlation_id
        bound = log.bind(correlation_id=run, envelope_id=completion.id, attempt=delivery.attempt)
        await self.wait_committed(completion)
        behind = await self.wait_settled(delivery.entry_id)
        if behind:
            bound.warning("reporter.auditor_behind", streams=behind, waited_s=self.settle_timeout_s)
        written = await self.write(run)
        notice = self.notice(completion, written)
        await self.publisher.publish(notice)
        d = written.report.declaration
        bound.info(
            "reporter.ready",
            outcome=written.report.outcome.status,
            path=str(written.markdown),
            digest=d.digest,
            head_seq=d.head_seq,
        )

    async def wait_committed(self, completion: PacketEnvelope) -> None:
        """Until ``completion`` is in the trail; ReportNotReady past the bound."""
        wanted = EntryFilter(type_glob=completion.type, correlation_id=completion.correlation_id)
        cursor = 0
        with anyio.move_on_after(self.commit_timeout_s):
            while True:
                page = await self.store.entries_after(cursor, filters=wanted)
                if any(e.envelope_id == completion.id for e in page.entries):
                    return
                cursor = page.cursor
                await anyio.sleep(POLL_S)
        raise ReportNotReady(
            f"run {completion.correlation_id}: {completion.type} {completion.id} is not in the audit trail "
            f"after {self.commit_timeout_s:g} s (is an auditor running?)"
        )

    async def wait_settled(self, upto: str) -> list[str]:
        """Until the auditor committed everything published up to entry id ``upto`` (bounded);
        the streams it is still behind on when the bound passed."""
        behind = await auditor_behind(self.redis, self.keys, upto)
        with anyio.move_on_after(self.settle_timeout_s):
            while behind:
                await anyio.sleep(POLL_S)
                behind = await auditor_behind(self.redis, self.keys, upto)
        return behind

    async def build(self, run: str) -> Report:
        """The signed report of ``run`` on the head the trail fixes (see the module doc)."""
        entries = await self.store.entries_for_correlation(run)
        if self.store.layout.chains > 1:  # seqs of different chains: commit order
            entries.sort(key=commit_order)
        head = evidence_head(entries)
        upto = entries[: entries.index(head) + 1]
        checkpoint = await oldest_covering(self.store, [e.seq for e in upto], self.key)
        report = build_report(
            entries,
            run_id=run,
            generated_at=head.recorded_at,
            head=ChainPoint(head.seq, head.chain_hash),
            checkpoint=checkpoint,
            cite_root=checkpoint.root is not None,
        )
        return sign_report(report, self.key)

    async def write(self, run: str) -> Written:
        report = await self.build(run)
        name = report_name(run)
        markdown, json_path = self.reports_dir / f"{name}.md", self.reports_dir / f"{name}.json"
        md_text, json_text = render(report, "md"), render(report, "json")
        await anyio.to_thread.run_sync(write_atomic, markdown, md_text)
        await anyio.to_thread.run_sync(write_atomic, json_path, json_text)
        return Written(report, markdown, json_path)

    def notice(self, completion: PacketEnvelope, written: Written) -> PacketEnvelope:
        report = written.report
        result = RESULT_OF[report.outcome.status]
        ready = ReportReady(
            outcome=f"report {result}: {written.markdown}",
            run=completion.correlation_id,
            result=result,
            path=str(written.markdown),
            report_digest=report.declaration.digest,
            head_seq=report.declaration.head_seq,
        )
        return PacketEnvelope(
            id=notice_id(completion.id),
            type=registry.type_of(ReportReady),
            source=self.source,
            data=ready.model_dump(mode="json"),
            correlation_id=completion.correlation_id,
            causation_id=completion.id,
            dataschema=f"urn:l9:schema:{registry.type_of(ReportReady)}",
        )
