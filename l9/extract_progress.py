"""Following one extraction run on the bus, for ``l9 extract``.

:class:`RunWatcher` reads the phase streams from positions taken before the request
is published (``XREAD``, no consumer group: watching takes nothing from the agents),
keeps the entries whose plain ``correlation_id`` field is the run's, and decodes them
(signature checked). It watches the dead letters of the streams the phases consume too:
an envelope of the run that the phase's agent gave up on is seen at once
(:attr:`RunWatcher.dead`) instead of the command waiting for its timeout.
:class:`RunProgress` turns them into the state of each phase (plan, generate, enforce,
validate, report) and of each agent being generated, and
keeps what the command prints in full at the end: every error of a rejection or of a
failed generation, every denial, test failure and verification problem
(:meth:`RunProgress.problems`), and every entry a plan locked with strict mode off left
out (:attr:`RunProgress.left_out`). A phase's seconds run from the end of the phase
before it (the plan's from the request) to its own end: an agent that reports only
when done still shows how long it worked. :func:`missing_consumers` says which agents'
groups have nobody alive when a run is stuck.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from agents.extraction import (
    AgentGenerated,
    EnforcementCompleted,
    GenerationCompleted,
    GenerationFailed,
    PlanBaseline,
    PlanLocked,
    PlanRejected,
    PlanResearch,
    ReportReady,
    RunCompleted,
    SchemaParsed,
    TestsValidated,
    Unresolved,
    Verified,
)
from bus import Keys, as_text
from bus.connection import RedisClient, is_cluster
from bus.slots import SlotReads, by_slot, read_in_slot, xread_command
from envelope import EnvelopeError, PacketEnvelope, Payload, Verifier, decode
from governance import DecisionMade, EscalationRequested, EscalationResolved, PolicyFile
from l9.dead import DeadLetter, dead_letter

log = structlog.get_logger("l9.extract")
#: The phases of a run, in order, and who does each: (agent's group, the stream it consumes).
PHASES: dict[str, tuple[str, str]] = {
    "plan": ("planner", "extract"),
    "generate": ("generator", "plan"),
    "enforce": ("enforcer", "generate"),
    "validate": ("validator", "enforce"),
    "report": ("reporter", "run"),
}
#: Streams a run's envelopes travel on besides the governance ones of the policy file.
PHASE_STREAMS = ("schema", "plan", "generate", "enforce", "validation", "run", "report")


def run_streams(policy: PolicyFile) -> list[str]:
    """Every stream the envelopes of a run can be on (the policy file names the governance ones)."""
    spec = policy.escalation
    governance = [a.channel for a in policy.anchors] + [spec.stream, spec.resolutions, spec.decisions]
    return list(dict.fromkeys([*PHASE_STREAMS, *governance]))


class RunWatcher:
    """The run's envelopes, read from positions marked before the request was published."""

    def __init__(self, redis: RedisClient, keys: Keys, verifier: Verifier, streams: Iterable[str]) -> None:
        self.redis, self.keys, self.verifier = redis, keys, verifier
        self.positions = {keys.stream(name): "0-0" for name in streams}
        #: The dead letters of each stream a phase consumes: dead-letter key -> (phase's group, stream).
        self._dead = {keys.dead(stream): (group, stream) for group, stream in PHASES.values()}
        self.positions.update(dict.fromkeys(self._dead, "0-0"))
        #: The run's envelopes an agent gave up on (dead-lettered), in the order seen.
        self.dead: list[DeadLetter] = []
        #: on a cluster, the streams of each slot (one XREAD may not span slots)
        self._slots = by_slot(self.positions) if is_cluster(redis) else {}
        self._reads = SlotReads()

    async def mark(self) -> None:
        """Remember where every stream ends now: only later entries are read."""
        for key in self.positions:
            last = await self.redis.xrevrange(key, count=1)
            self.positions[key] = as_text(last[0][0]) if last else "0-0"

    async def read(self, run: str, block_ms: int) -> list[tuple[PacketEnvelope, Payload]]:
        """The run's next envelopes on any of the streams (waiting up to ``block_ms`` for one)."""
        replies: Any
        if self._slots:
            reads = {slot: self._reader(slot, slot_keys, block_ms) for slot, slot_keys in self._slots.items()}
            replies = await self._reads.next(reads)
        else:
            replies = await self.redis.xread(self.positions, block=block_ms, count=500)  # type: ignore[arg-type]
        out = []
        for key, entries in replies or []:
            for entry_id, fields in entries:
                self.positions[as_text(key)] = as_text(entry_id)
                if fields.get(b"correlation_id") != run.encode():
                    continue
                phase = self._dead.get(as_text(key))
                if phase is not None:
                    letter = dead_letter(phase[1], entry_id, fields)
                    if letter.group == phase[0]:  # the phase's own agent gave up (not, say, the auditor)
                        self.dead.append(letter)
                    continue
                try:
                    out.append(decode(fields, self.verifier))
                except EnvelopeError as exc:
                    log.warning(
                        "extract.undecodable", stream=as_text(key), entry=as_text(entry_id), error=str(exc)
                    )
        out.sort(key=lambda pair: pair[0].time)
        return out

    def _reader(self, slot: int, keys: list[str], block_ms: int) -> Callable[[], Awaitable[Any]]:
        """An XREAD of ``keys`` (of one slot, read on its master) from their positions now."""
        command = xread_command({key: self.positions[key] for key in keys}, 500, block_ms)
        cluster: Any = self.redis
        return lambda: read_in_slot(cluster, slot, *command)

    def close(self) -> None:
        """Cancel the reads under way (on a cluster)."""
        self._reads.cancel()


async def missing_consumers(redis: RedisClient, keys: Keys) -> list[str]:
    """``group (stream S)`` for every agent of the pipeline with no live process: no heartbeat
    key of a consumer named ``<group>-<instance>`` (the names agents claim)."""
    missing = []
    for group, stream in [*PHASES.values(), ("auditor", "every stream")]:
        # the reporter runs in the auditor's processes, as consumer auditor-reporter-<n>
        base = "auditor-reporter" if group == "reporter" else group
        alive = [key async for key in redis.scan_iter(match=keys.heartbeat(f"{base}-*"), count=1000)]
        if not alive:
            missing.append(f"{group} (stream {stream})")
    return missing


@dataclass
class PhaseState:
    name: str
    status: str = "waiting"  # waiting, running, done, failed, skipped
    agent: str = ""
    detail: str = ""
    started: float | None = None
    ended: float | None = None

    def seconds(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.ended or now) - self.started


@dataclass
class RunProgress:
    """What is known of one run from its envelopes (see :meth:`apply`)."""

    run: str
    phases: dict[str, PhaseState] = field(default_factory=lambda: {p: PhaseState(p) for p in PHASES})
    #: Collection agent -> what the generator said of it.
    agents: dict[str, str] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)
    #: What each answered escalation came to ("approved by Igor: ...").
    answers: list[str] = field(default_factory=list)
    completed: RunCompleted | None = None
    ready: ReportReady | None = None
    folder: str | None = None
    last_activity: float = field(default_factory=time.monotonic)
    #: Entries the locked plan left out (strict mode off): they are not generated.
    left_out: tuple[Unresolved, ...] = ()
    #: What went wrong, in full, by phase (every error, denial, failure).
    found: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        plan = self.phases["plan"]  # the request is out: planning starts now
        plan.status, plan.started = "running", self.last_activity

    def problems(self) -> list[str]:
        """Everything that went wrong, each in full, in phase order."""
        return [line for phase in PHASES for line in self.found.get(phase, [])]

    @property
    def finished(self) -> bool:
        return self.ready is not None

    @property
    def passed(self) -> bool:
        return (
            self.completed is not None
            and self.completed.result == "passed"
            and self.ready is not None
            and self.ready.result == "passed"
        )

    def current(self) -> str:
        """The first phase neither done nor failed (where a stuck run is stuck)."""
        return next((p.name for p in self.phases.values() if p.status in ("waiting", "running")), "report")

    def apply(self, envelope: PacketEnvelope, payload: Payload, now: float | None = None) -> str:
        """Update the state from one envelope of the run; returns the phase it belongs to."""
        now = time.monotonic() if now is None else now
        self.last_activity = now
        phase, handler = _HANDLERS.get(type(payload), (self.current(), None))
        state = self.phases[phase]
        if state.status == "waiting":
            state.status, state.started = "running", now
        state.agent = envelope.source.removeprefix("agent://")
        if handler is not None:
            handler(self, payload)
        for finished in self.phases.values():  # this phase, or the one a run's end names
            if finished.status in ("done", "failed") and finished.ended is None:
                finished.ended = now
        self._start_next()
        return phase

    def _start_next(self) -> None:
        """The phase after a finished one is at work from then on (its agent may say nothing
        before it is done)."""
        for before, after in itertools.pairwise(self.phases.values()):
            if before.status == "done" and before.ended is not None and after.status == "waiting":
                after.status, after.started = "running", before.ended

    def end_phase(self, name: str, ok: bool, detail: str) -> None:
        state = self.phases[name]
        state.status, state.detail = ("done" if ok else "failed"), detail

    def _completed(self, payload: RunCompleted) -> None:
        self.completed, self.folder = payload, payload.folder or self.folder
        if payload.result == "failed" and not self.found.get(payload.phase) and payload.reason:
            self.found[payload.phase] = [payload.reason]  # a crash, or a failure with no details
        ended = self.phases[payload.phase]
        if ended.status in ("waiting", "running"):
            self.end_phase(ended.name, payload.result == "passed", payload.outcome)
        failed = payload.result == "failed"
        for state in self.phases.values():
            if state.name != "report" and state.status == "waiting" and failed:
                state.status = "skipped"
        self.phases["report"].detail = f"run {payload.result}: rendering the evidence report"


def _schema(p: RunProgress, x: SchemaParsed) -> None:
    p.phases["plan"].detail = f"{x.outcome} ({x.collection}, {x.format})"


def _research(p: RunProgress, x: PlanResearch) -> None:
    p.phases["plan"].detail = f"research: {x.outcome}"


def _baseline(p: RunProgress, x: PlanBaseline) -> None:
    p.phases["plan"].detail = f"baseline {x.outcome}"


def _locked(p: RunProgress, x: PlanLocked) -> None:
    p.left_out = x.plan.unresolved
    dropped = f", {len(p.left_out)} entries left out (strict mode off)" if p.left_out else ""
    p.end_phase("plan", True, f"{x.outcome}, plan {x.hash[:12]}{dropped}")
    for wave, names in enumerate(x.plan.waves):
        for name in names:
            p.agents[name] = f"wave {wave}: waiting"


def _rejected(p: RunProgress, x: PlanRejected) -> None:
    p.found["plan"] = [e.text for e in x.errors]
    p.end_phase("plan", False, f"{x.outcome}: " + "; ".join(e.text for e in x.errors[:2]))


def _agent(p: RunProgress, x: AgentGenerated) -> None:
    lines = sum(f.lines for f in x.files)
    kernels = f", kernels {', '.join(x.kernels)}" if x.kernels else ""
    p.agents[x.agent] = f"wave {x.wave}: {len(x.files)} files, {lines} lines{kernels}"
    done = sum(1 for v in p.agents.values() if "files" in v)
    p.phases["generate"].detail = f"{done} of {len(p.agents)} agents generated"


def _generated(p: RunProgress, x: GenerationCompleted) -> None:
    p.folder = x.folder
    p.end_phase("generate", True, f"{x.outcome} in {x.folder}")


def _generation_failed(p: RunProgress, x: GenerationFailed) -> None:
    p.folder = x.folder or p.folder
    p.found["generate"] = list(x.errors)
    p.end_phase("generate", False, f"{x.outcome}: {x.errors[0]}")


def _decision(p: RunProgress, x: DecisionMade) -> None:
    outcome = x.decision.outcome.value
    p.decisions[outcome] = p.decisions.get(outcome, 0) + 1
    counts = ", ".join(f"{n} {o}" for o, n in sorted(p.decisions.items()))
    p.phases["enforce"].detail = f"decisions: {counts}"


def _escalation(p: RunProgress, x: EscalationRequested) -> None:
    anchors = ", ".join(x.anchors)
    p.phases["enforce"].detail = f"escalated to {anchors}: {x.decision.reason} (waiting for an answer)"


def _resolution(p: RunProgress, x: EscalationResolved) -> None:
    verdict = "approved" if x.approved else "denied"
    p.answers.append(f"escalation {verdict} by {x.by}: {x.reason}")
    p.phases["enforce"].detail = p.answers[-1]


def _enforced(p: RunProgress, x: EnforcementCompleted) -> None:
    p.found["enforce"] = [f"{d.policy} denied {d.path}: {d.reason}" for d in x.denied]
    denied = "; ".join(f"{d.path}: {d.policy}" for d in x.denied[:2])
    notes = "".join(f"; {a}" for a in p.answers)
    detail = f"{x.outcome}{': ' + denied if denied else ''}{notes}"
    p.end_phase("enforce", x.allowed, detail)


def _tests(p: RunProgress, x: TestsValidated) -> None:
    rate, coverage = f"{100 * x.pass_rate:.1f}%", f"{x.coverage_percent:.1f}%"
    p.found.setdefault("validate", []).extend(
        [*(f"does not compile: {e}" for e in x.compile_errors), *(f"test: {f}" for f in x.failures)]
    )
    p.phases["validate"].detail = f"tests {x.passed}/{x.tests} passed ({rate}), coverage {coverage}"


def _verified(p: RunProgress, x: Verified) -> None:
    found = [
        *(f"missing: {f}" for f in x.missing),
        *(f"not in the plan: {f}" for f in x.extra),
        *(f"changed: {f}" for f in x.changed),
        *(f"import cycle: {' -> '.join(c)}" for c in x.cycles),
        *(f"unresolved link: {u}" for u in x.unresolved_links),
        *(f"governance: {g}" for g in x.broken_governance),
    ]
    p.found.setdefault("validate", []).extend(found)
    p.phases["validate"].detail += f"; verification {'ok' if x.ok else 'FAILED'}: {x.outcome}"


def _ready(p: RunProgress, x: ReportReady) -> None:
    p.ready = x
    p.end_phase("report", True, f"report {x.result}: {x.path}")


Handler = Callable[[RunProgress, Any], None]
_HANDLERS: dict[type[Payload], tuple[str, Handler | None]] = {
    SchemaParsed: ("plan", _schema),
    PlanResearch: ("plan", _research),
    PlanBaseline: ("plan", _baseline),
    PlanLocked: ("plan", _locked),
    PlanRejected: ("plan", _rejected),
    AgentGenerated: ("generate", _agent),
    GenerationCompleted: ("generate", _generated),
    GenerationFailed: ("generate", _generation_failed),
    DecisionMade: ("enforce", _decision),
    EscalationRequested: ("enforce", _escalation),
    EscalationResolved: ("enforce", _resolution),
    EnforcementCompleted: ("enforce", _enforced),
    TestsValidated: ("validate", _tests),
    Verified: ("validate", _verified),
    RunCompleted: ("report", RunProgress._completed),
    ReportReady: ("report", _ready),
}


def summary_of(payload: Payload) -> str:
    """A payload's own one-line outcome, when it has one."""
    outcome = getattr(payload, "outcome", None)
    return outcome if isinstance(outcome, str) else type(payload).__name__


def phase_rows(progress: RunProgress, now: float) -> Sequence[tuple[str, str, str, str, str]]:
    """(phase, agent, status, seconds, detail) rows, the generated agents under ``generate``."""
    rows = []
    for state in progress.phases.values():
        seconds = state.seconds(now)
        rows.append(
            (state.name, state.agent, state.status, "" if seconds is None else f"{seconds:.1f}", state.detail)
        )
        if state.name == "generate":
            rows += [(f"  {name}", "", "", "", detail) for name, detail in progress.agents.items()]
    return rows
