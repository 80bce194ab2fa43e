"""The planner applies the policy file's rate limit per requester (real Redis): a request over it is
rejected at stage ``request`` with when to retry and its run ended, nothing planned; other requesters
have their own budget; a redelivered request is not counted twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents.contracts.extraction.baseline import Probe
from agents.extraction import ExtractRequest, PlanLocked, PlanRejected, RunCompleted, SchemaParsed
from agents.extraction.planner_agent import PlannerAgent
from agents.runtime import Runtime
from bus import Delivery, Keys
from bus.connection import RedisClient
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode
from governance import DEFAULT_POLICY_FILE
from l9.settings import Settings
from tests.conftest import stream_entries

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "symbolic_computation_service.yaml"


async def fine() -> None:
    return None


PROBES: dict[str, Probe] = {"redis": fine, "postgres": fine, "graph": fine}


def policy_with_limit(tmp_path: Path, limit: int) -> Path:
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    (extraction,) = [r for r in policy["rate_limits"] if r["types"] == ["l9.extract.request.*"]]
    extraction["limit"] = limit
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def request(requester: str) -> PacketEnvelope:
    payload = ExtractRequest.of_text(EXAMPLE.read_text(), EXAMPLE.name, requester)
    return PacketEnvelope.new(
        type="l9.extract.request.v1", source="agent://cli/cli-0", data=payload.model_dump(mode="json")
    )


async def emitted(redis: RedisClient, keys: Keys, verifier: Verifier, run: str) -> list[Payload]:
    out = []
    for stream in ("schema", "plan", "run"):
        for _, fields in stream_entries(await redis.xrange(keys.stream(stream))):
            envelope, payload = decode(fields, verifier)
            if envelope.correlation_id == run:
                out.append((envelope.sequence, payload))
    return [payload for _, payload in sorted(out, key=lambda pair: pair[0])]


async def test_a_requester_over_the_limit_is_refused_with_a_retry_time_and_nothing_planned(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, tmp_path: Path
) -> None:
    settings = Settings(policy_file=policy_with_limit(tmp_path, 2))
    runtime = Runtime(
        redis=redis, keys=keys, signer=signer, verifier=verifier, agent="planner", instance="p-0"
    )
    planner = PlannerAgent(runtime, settings.planner_config(), probes=PROBES)
    await planner.on_start()

    async def deliver(envelope: PacketEnvelope, attempt: int = 1) -> list[Payload]:
        payload = ExtractRequest.model_validate(envelope.data)
        await planner.handle(Delivery("extract", "1-0", envelope, payload, attempt, {}))
        return await emitted(redis, keys, verifier, envelope.correlation_id)

    first, second, third = request("user:alice"), request("user:alice"), request("user:alice")
    assert isinstance((await deliver(first))[-1], PlanLocked)
    assert isinstance((await deliver(second))[-1], PlanLocked)
    refused = await deliver(third)
    assert [type(p) for p in refused] == [PlanRejected, RunCompleted]  # nothing parsed, nothing planned
    rejection, ended = refused
    assert isinstance(rejection, PlanRejected) and rejection.stage == "request"
    (error,) = rejection.errors
    assert error.text.startswith(
        "symbolic_computation_service.yaml: rate limited by extraction-requests-per-requester@1 "
        "(2 per 60 s per requester 'user:alice'), retry after "
    )
    seconds = int(error.text.rsplit("retry after ", 1)[1].removesuffix(" s"))
    assert 1 <= seconds <= 60
    assert isinstance(ended, RunCompleted) and (ended.result, ended.phase) == ("failed", "plan")
    assert "retry after" in ended.reason

    # another requester has a budget of its own; a redelivered admitted request is not refused
    bob = await deliver(request("user:bob"))
    assert [type(p) for p in bob][:1] == [SchemaParsed] and isinstance(bob[-1], PlanLocked)
    again = await deliver(first, attempt=2)
    assert [type(p) for p in again].count(PlanLocked) == 2
    # the envelope's auth, when set, is whose budget it spends
    on_behalf = request("user:bob").model_copy(update={"auth": "user:alice"})
    assert [type(p) for p in await deliver(on_behalf)] == [PlanRejected, RunCompleted]
