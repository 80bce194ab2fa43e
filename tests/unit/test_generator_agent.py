"""The generator agent in-process (no servers): its envelopes, the folder on disk, failures, redelivery.

The SymPy tool is replaced by one answering from the worker's own code generator
(or failing as the real one does); what the agent emits goes through an in-memory
publisher that signs and encodes like the bus.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from agents import Runtime
from agents.contracts.sympy.errors import ParseRejected, Position
from agents.contracts.sympy.payloads import GenerateCodeResult, Language
from agents.extraction import (
    AgentGenerated,
    GenerationCompleted,
    GenerationFailed,
    LockedPlan,
    PlanLocked,
    RunCompleted,
    load_file,
    lock,
)
from agents.extraction.generator import (
    GeneratorAgent,
    KernelCodeError,
    KernelSource,
    kernel_code,
    write_folder,
)
from agents.extraction.generator.folder import STALE_S
from agents.sympy.codegen import generate
from agents.sympy.parser import canonical_hash, parse
from bus import Delivery, Keys, Publisher, RpcTimeout
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode, encode
from l9.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
KEYRING = {"test": b"generator-unit-test"}
STAMP = "20260102T030405Z"


class LocalTool:
    """Answers generate_code as the SymPy worker does; or fails like it, for the formulas in ``fail``."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fail = fail or {}
        self.asked: list[str] = []

    async def generate_code(
        self,
        expr: str,
        language: Language,
        *,
        name: str = "kernel",
        cse: bool = True,
        deadline_s: float | None = None,
    ) -> GenerateCodeResult:
        self.asked.append(expr)
        if expr in self.fail:
            raise self.fail[expr]
        parsed = parse(expr)
        code = generate(parsed, language, name, None, cse)
        return GenerateCodeResult(expr_hash=canonical_hash(parsed), language=language, name=name, **code)


class MemoryPublisher(Publisher):
    def __init__(self, signer: Signer) -> None:
        super().__init__(cast(Any, None), Keys("unit"), signer)
        self.entries: list[tuple[str, dict[str, str | bytes]]] = []

    async def publish_many(self, envelopes: Sequence[PacketEnvelope], stream: str | None = None) -> list[str]:
        self.entries.extend((stream or self.stream_of(e), encode(e, self.signer)) for e in envelopes)
        return [str(i) for i in range(len(envelopes))]

    def acked(self, delivery: Delivery) -> None:
        """What the handler emitted with the delivery's ack, as the consumer would send it."""
        for command in delivery.emits:
            if command[0] == "XADD":
                args = command[3:]
                self.entries.append(
                    (self.keys.name_of(command[1]), dict(zip(args[::2], args[1::2], strict=True)))
                )

    def sent(self) -> list[tuple[str, PacketEnvelope, Payload]]:
        return [(stream, *decode(fields, Verifier(KEYRING))) for stream, fields in self.entries]


def generator(tool: LocalTool, tmp_path: Path) -> tuple[GeneratorAgent, MemoryPublisher]:
    signer = Signer(KEYRING, "test")
    runtime = Runtime(
        redis=cast(Any, None),
        keys=Keys("unit"),
        signer=signer,
        verifier=Verifier(KEYRING),
        agent="generator",
        instance="generator-0",
    )
    publisher = MemoryPublisher(signer)
    runtime.publisher = publisher
    settings = Settings(extractions_dir=tmp_path / "default", generator_sympy_deadline_s=2.0)
    return GeneratorAgent(runtime, settings.generator_config(), tool=tool), publisher


@pytest.fixture(scope="module")
def plan() -> LockedPlan:
    return lock(load_file(SAMPLE))


def locked_envelope(plan: LockedPlan, out_dir: Path | None, run: str | None = None) -> PacketEnvelope:
    payload = PlanLocked.of(plan, stamp=STAMP, out_dir=None if out_dir is None else str(out_dir))
    return PacketEnvelope.new(
        type="l9.plan.locked.v1",
        source="agent://planner/planner-0",
        data=payload.model_dump(mode="json"),
        correlation_id=run,
    )


async def deliver(agent: GeneratorAgent, envelope: PacketEnvelope) -> None:
    payload = PlanLocked.model_validate(envelope.data)
    delivery = Delivery("plan", "1-0", envelope, payload, 1, {})
    await agent.handle(delivery)
    cast(MemoryPublisher, agent.runtime.publisher).acked(delivery)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


async def test_a_locked_plan_becomes_the_folder_and_its_envelopes(plan: LockedPlan, tmp_path: Path) -> None:
    agent, publisher = generator(LocalTool(), tmp_path)
    cause = locked_envelope(plan, tmp_path / "out")
    await deliver(agent, cause)
    sent = publisher.sent()
    assert [type(p).__name__ for _, _, p in sent] == ["AgentGenerated"] * 5 + ["GenerationCompleted"]
    assert all(e.causation_id == cause.id and e.correlation_id == cause.correlation_id for _, e, _ in sent)
    assert {stream for stream, _, _ in sent} == {"generate"}
    progress = [p for _, _, p in sent if isinstance(p, AgentGenerated)]
    assert (progress[0].agent, progress[-1].agent) == ("tensoraios", "plastos_adapter")
    assert {p.agent: (p.wave, p.kernels) for p in progress} == {
        "tensoraios": (0, ("embedding_similarity", "tensor_score")),
        "main_agent": (1, ()),
        "tensor_trainer": (1, ("learning_rate", "logistic_loss")),
        "tensor_auditor": (1, ("drift_score",)),
        "plastos_adapter": (2, ()),
    }
    completed = sent[-1][2]
    assert isinstance(completed, GenerationCompleted)
    folder = tmp_path / "out" / f"tensoraios_ecosystem_{STAMP}"
    assert completed.folder == str(folder) and completed.plan_hash == plan.hash
    on_disk = tree(folder)
    assert set(on_disk) == {f.path for f in completed.files} | {"extraction_manifest.json"}
    for entry in completed.files:
        assert hashlib.sha256(on_disk[entry.path]).hexdigest() == entry.sha256
        assert (entry.size, entry.lines) == (len(on_disk[entry.path]), on_disk[entry.path].count(b"\n"))
    assert {f for p in progress for f in p.files} == set(completed.files)
    manifest = json.loads(on_disk["extraction_manifest.json"])
    assert hashlib.sha256(on_disk["extraction_manifest.json"]).hexdigest() == completed.manifest_sha256
    assert manifest["format"] == "l9.extraction/1" and manifest["run"] == cause.correlation_id
    assert LockedPlan.model_validate(manifest["plan"]) == plan
    assert [f["path"] for f in manifest["files"]] == sorted(f.path for f in completed.files)


async def test_a_redelivery_and_a_second_run_give_the_same_bytes(plan: LockedPlan, tmp_path: Path) -> None:
    agent, _ = generator(LocalTool(), tmp_path)
    cause = locked_envelope(plan, tmp_path / "a")
    await deliver(agent, cause)
    folder = tmp_path / "a" / f"tensoraios_ecosystem_{STAMP}"
    first = tree(folder)
    (folder / "code" / "stray.py").write_text("left by someone\n")
    await deliver(agent, cause)  # at-least-once: the same envelope again
    assert tree(folder) == first, "the same folder, byte for byte, the stray file gone"
    await deliver(agent, locked_envelope(plan, tmp_path / "b"))  # another run of the same request
    second = tree(tmp_path / "b" / f"tensoraios_ecosystem_{STAMP}")
    manifest = "extraction_manifest.json"
    assert {p: b for p, b in second.items() if p != manifest} == {
        p: b for p, b in first.items() if p != manifest
    }
    one, two = json.loads(first[manifest]), json.loads(second[manifest])
    assert one["run"] != two["run"]
    assert {k: v for k, v in one.items() if k not in ("run", "generated_at")} == {
        k: v for k, v in two.items() if k not in ("run", "generated_at")
    }


async def test_the_default_folder_is_under_the_extractions_dir(plan: LockedPlan, tmp_path: Path) -> None:
    agent, publisher = generator(LocalTool(), tmp_path)
    await deliver(agent, locked_envelope(plan, None))
    completed = publisher.sent()[-1][2]
    assert isinstance(completed, GenerationCompleted)
    assert completed.folder == str((tmp_path / "default" / f"tensoraios_ecosystem_{STAMP}").resolve())


async def test_no_answer_from_the_sympy_tool_fails_the_run(plan: LockedPlan, tmp_path: Path) -> None:
    formula = plan.agents[0].expressions["tensor_score"]
    tool = LocalTool({formula: RpcTimeout("x", "l9.sympy.generate_code.v1", 2.0)})
    agent, publisher = generator(tool, tmp_path)
    cause = locked_envelope(plan, tmp_path / "out")
    await deliver(agent, cause)
    sent = [p for _, _, p in publisher.sent()]
    assert [type(p) for p in sent] == [GenerationFailed, RunCompleted], "wave 0 failed: nothing after it"
    failed, ended = sent
    assert isinstance(failed, GenerationFailed) and isinstance(ended, RunCompleted)
    assert failed.errors == (
        "agent 'tensoraios' kernel 'tensor_score' (1/(1+exp(-(w1*x + w2*y**2)))): the SymPy tool did not"
        " answer generate_code within 2 s (is `l9 agent run sympy` running on this bus?)",
    )
    assert (ended.result, ended.phase) == ("failed", "generate") and "did not answer" in ended.reason
    assert not (tmp_path / "out").exists(), "nothing is written"


async def test_a_refused_formula_is_named_with_the_rule(plan: LockedPlan, tmp_path: Path) -> None:
    formula = plan.agents[-1].expressions["drift_score"]
    refusal = ParseRejected("forbidden", "forbidden_name", "Abs is not allowed", Position(1, 1, 0))
    agent, publisher = generator(LocalTool({formula: refusal}), tmp_path)
    await deliver(agent, locked_envelope(plan, tmp_path / "out"))
    sent = [p for _, _, p in publisher.sent()]
    assert [type(p).__name__ for p in sent] == ["AgentGenerated"] * 3 + ["GenerationFailed", "RunCompleted"]
    failed = sent[-2]
    assert isinstance(failed, GenerationFailed)
    assert failed.errors == (
        "agent 'tensor_auditor' kernel 'drift_score' (Abs(mu1 - mu2)/sqrt(s1**2 + s2**2)): the SymPy tool"
        " refused it: forbidden: forbidden_name at 1:1 (offset 0): Abs is not allowed",
    )


def test_a_crashed_write_leaves_no_half_folder_and_is_cleaned_up_later(tmp_path: Path) -> None:
    folder = tmp_path / "run_x"
    stale = tmp_path / ".run_x.tmp-dead"
    (stale / "code").mkdir(parents=True)
    old = time.time() - STALE_S - 1
    os.utime(stale, (old, old))
    fresh = tmp_path / ".run_x.tmp-busy"
    fresh.mkdir()
    write_folder(folder, {"code/a.py": b"A = 1\n", "docs/x/README.md": b"# x\n"})
    assert tree(folder) == {"code/a.py": b"A = 1\n", "docs/x/README.md": b"# x\n"}
    assert not stale.exists(), "a crashed write's leftover is removed"
    assert fresh.exists(), "another writer's staging folder is left alone"
    with pytest.raises(ValueError, match="not a relative path"):
        write_folder(folder, {"../escape.py": b""})
    assert tree(folder) == {"code/a.py": b"A = 1\n", "docs/x/README.md": b"# x\n"}, "the folder is untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run_x.tmp-busy", "run_x"]


def source_of(body: str, params: tuple[str, ...] = ("x",)) -> KernelSource:
    text = f'import numpy\n\n\ndef result({", ".join(params)}):\n    """Doc."""\n{body}\n'
    return KernelSource("k", "x", params, params, text, 1, 1, "0" * 64)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ("    import os\n    return os.system('x')", "line 6 is not an assignment"),
        ("    return __import__('os')", "unknown name '__import__'"),
        ("    return x.__class__", "is not a numpy/math function"),
        ("    return numpy.sin(x) + 'a'", "constant 'a'"),
        ("    return 1j*x", "constant 1j"),
        ("    t0 = y\n    return t0", "unknown name 'y'"),
        ("    x[0] = 1\n    return x", "not an assignment to one temporary"),
        ("    return functools.partial(x)", "functools.partial is not allowed"),
        ("    t0 = x", "does not end with a return"),
    ],
)
def test_kernel_code_off_the_whitelist_is_refused(body: str, what: str) -> None:
    with pytest.raises(KernelCodeError, match=what):
        kernel_code(source_of(body))


def test_kernel_code_keeps_temporaries_and_vectorises_math() -> None:
    code = kernel_code(source_of("    t0 = numpy.sin(x)\n    return t0**2 + math.erf(t0)"))
    assert code.temporaries == (("t0", "numpy.sin(x)"),)
    assert code.result == "t0 ** 2 + numpy.vectorize(math.erf, otypes=[float])(t0)"
    assert code.modules == ("math",)
    mismatched = KernelSource("k", "x", ("x",), ("y",), source_of("    return x").source, 1, 1, "0" * 64)
    with pytest.raises(KernelCodeError, match="parameters"):
        kernel_code(mismatched)
