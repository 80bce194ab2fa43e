"""A session exported from the real audit trail replays against a fresh worker with no difference;
a tampered result is reported, naming the operation and both results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agents.sympy import ParseRejected, SymPyTool
from bus import Keys, Publisher, RpcClient
from bus.connection import RedisClient
from envelope import Signer, Verifier
from memory.postgres import PostgresAuditStore, SigningKey
from tests.conftest import AgentProcess, run_l9, wait_for

pytestmark = pytest.mark.integration
SESSION = "session-under-test"


@pytest.fixture
def env(agent_env: dict[str, str], admin_dsn: str, tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "audit-key.hex"
    key_file.write_text(SigningKey.generate().private_bytes.hex())
    return {
        **agent_env,
        "DATABASE_URL": admin_dsn,
        "L9_AUDIT_KEY_FILE": str(key_file),
        "L9_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "L9_SYMPY_WORKERS": "1",
    }


async def run_session(tool: SymPyTool) -> None:
    assert (await tool.simplify("sin(x)**2 + cos(x)**2 + x")).expr == "x + 1"
    value = (await tool.evaluate("x**2*y + sin(x)", points={"x": [0.5, 1.5], "y": [2, 3]})).values[0]
    assert value is not None and value > 0
    await tool.diff("x**3*y", "x", 2)
    await tool.solve("x**2 == 4")
    await tool.generate_code("exp(x)*y + x**2", "c", name="energy")
    await tool.cse("sin(x)*cos(x) + sin(x)", "cos(x)*sin(x)")
    with pytest.raises(ParseRejected):
        await tool.expand("__import__('os').system('id')")


async def answered(store: PostgresAuditStore, verifier: Verifier, requests: int) -> bool:
    envelopes = [e.envelope(verifier) for e in await store.entries_for_correlation(SESSION)]
    asked = [e for e in envelopes if e.kind == "request" and e.type.startswith("l9.sympy.")]
    replied = {e.in_reply_to for e in envelopes if e.in_reply_to}
    return len(asked) == requests and all(e.id in replied for e in asked)


async def test_export_then_replay_on_a_fresh_worker_and_a_tampered_result_is_named(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    env: dict[str, str],
    store: PostgresAuditStore,
    tmp_path: Path,
) -> None:
    spawn("auditor", env=env)
    worker = spawn("sympy", env=env)
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        await run_session(SymPyTool(rpc, source="agent://test/caller", session=SESSION))
    cli = run_l9("sympy", "simplify", "x + x", "--session", SESSION, env=env)  # a caller gone at once
    assert cli.returncode == 0, cli.stderr
    await wait_for(lambda: answered(store, verifier, 8), timeout=120)

    exported = run_l9("sympy", "export", SESSION, env=env)
    assert exported.returncode == 0, exported.stderr
    record = json.loads(exported.stdout)
    assert record["format"] == "l9.sympy.session/1" and record["session"] == SESSION
    ops = record["operations"]
    assert [op["op"] for op in ops] == [
        "simplify", "evaluate", "diff", "solve", "generate_code", "cse", "expand", "simplify",
    ]  # fmt: skip
    assert all(op["result"] is not None for op in ops), "the CLI's reply too, though its stream is gone"
    assert (
        ops[6]["result"]["type"] == "l9.bus.error.v1"
        and ops[6]["result"]["data"]["error"] == "sympy.forbidden"
    )
    assert ops[7]["result"]["data"]["expr"] == "2*x"
    path = tmp_path / "session.json"
    path.write_text(exported.stdout)

    assert worker.terminate() == 0
    await _forget_cached_results(redis, keys)
    spawn("sympy", env=env)
    replayed = run_l9("sympy", "replay", str(path), env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"replayed 8 operation(s) of session {SESSION} as session " in replayed.stdout
    assert "0 differ" in replayed.stdout

    ops[0]["result"]["data"]["expr"] = "x + 2"
    path.write_text(json.dumps(record))
    tampered = run_l9("sympy", "replay", str(path), "--session", "replay-2", env=env)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert f"#0 simplify (request {ops[0]['request_id']}) differs:" in tampered.stdout
    assert '"expr": "x + 2"' in _line(tampered.stdout, "recorded:")
    assert '"expr": "x + 1"' in _line(tampered.stdout, "replayed:")
    assert "as session replay-2: 1 differ" in tampered.stdout


def _line(text: str, prefix: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(prefix))


async def _forget_cached_results(redis: RedisClient, keys: Keys) -> None:
    doomed: list[Any] = [k async for k in redis.scan_iter(match=f"{keys.namespace}:sympy:*")]
    if doomed:
        await redis.delete(*doomed)


async def test_export_of_an_unknown_session_and_replay_of_a_bad_file_are_clear_errors(
    env: dict[str, str], tmp_path: Path
) -> None:
    missing = run_l9("sympy", "export", "no-such-session", env=env)
    assert missing.returncode == 1 and "no SymPy request of session 'no-such-session'" in missing.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "l9.sympy.session/1", "session": "s", "operations": []}))
    refused = run_l9("sympy", "replay", str(bad), env=env)
    assert refused.returncode == 2 and "bad.json: exported_at: Field required" in " ".join(
        refused.stderr.split()
    )
