"""The console in a real browser: Debian's headless Chromium (``/usr/bin/chromium``) driven
by Playwright, against the console served on the real stack with agents as OS processes.

A consumer group's lag moves on the page as envelopes are published; a dead letter is
replayed from its card and handled by the ledger agent; an escalation raised by the real
enforcer is approved from the governance page, the run goes on, and its evidence report opens
verified. Skipped, with the reason, where Chromium is not installed (``make test`` installs
it as root when apt-get is there).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import yaml

from agents import extraction
from agents.extraction import EnforcementCompleted, RunCompleted, Verified
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode, registry
from governance import DEFAULT_POLICY_FILE
from l9.devstack import StackEndpoints
from l9.settings import Settings
from tests.conftest import KEYRING, AgentProcess, stream_entries, wait_for
from tests.integration.ledger import effects_count_key
from tests.integration.test_console import (
    HANG_S,
    TOKEN,
    Running,
    agent_env_of,
    settings_for,
    start_console,
    work,
)
from tests.unit.test_enforcer import AGENT, NETWORK, PLAN, clean_contents, write_folder

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium) to run the "
        "console's browser tests",
        allow_module_level=True,
    )

from playwright.async_api import Page, async_playwright, expect  # noqa: E402 (after the skip)

pytestmark = pytest.mark.integration
expect.set_options(timeout=HANG_S * 1000)

Open = Callable[[], Awaitable[Page]]


@pytest.fixture
async def browser_page() -> AsyncIterator[Open]:
    """Opens pages in one headless Chromium (Debian's, never a downloaded one)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])

        async def open_page() -> Page:
            return await browser.new_page(viewport={"width": 1440, "height": 1000})

        yield open_page
        await browser.close()


async def serve(
    settings: Settings, stack: StackEndpoints, database_url: str
) -> tuple[Running, Callable[[], Awaitable[None]]]:
    """The console on the test's Redis and ``database_url``; the second value stops it."""
    return await start_console(settings, StackEndpoints(stack.redis_url, database_url))


async def sign_in(page: Page, console: Running, then: str) -> None:
    await page.goto(f"{console.url}/login?next={then}")
    await page.fill("input[name=name]", "ada")
    await page.fill("input[name=token]", TOKEN)
    await page.click("form.login button")
    await page.wait_for_url(f"{console.url}{then}")


async def test_lag_moves_as_envelopes_are_published_and_a_replayed_dead_letter_is_handled(
    browser_page: Open,
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    stack: StackEndpoints,
    admin_dsn: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    console, stop = await serve(settings_for(namespace, tmp_path), stack, admin_dsn)
    try:
        spawn("tests.integration.ledger:LedgerAgent", env={"L9_MAX_DELIVERIES": "2"})
        # a group nobody reads: its lag is every envelope published after it was made
        await redis.xgroup_create(keys.stream("test"), "watchers", id="$", mkstream=True)
        page = await browser_page()
        await page.goto(console.url)
        lag = page.locator('[data-lag="test/watchers"]')
        await expect(lag).to_have_text("0")
        await expect(page.locator('[data-group="ledger"] li.alive')).to_have_count(1)
        publisher = Publisher(redis, keys, signer)
        await publisher.publish_many([work(n) for n in range(5)])
        await expect(lag).to_have_text("5")

        flaky = work(99, fail_times=2)  # fails twice: dead at the cap of 2; handled the third time
        await publisher.publish(flaky)
        await expect(page.locator('[data-dead="test"]')).to_have_text("1 dead")
        await sign_in(page, console, "/dead")
        card = page.locator(f'[data-letter]:has-text("{flaky.id}")')
        await expect(card).to_contain_text("delivery_cap")
        await card.locator("[data-replay]").click()
        await expect(page.locator("#toast [data-notice=ok]")).to_contain_text("replayed on test as entry")
        await expect(page.locator("[data-letter]")).to_have_count(0)

        async def handled() -> bool:
            return await redis.get(effects_count_key(keys)) == b"6"

        await wait_for(handled, timeout=HANG_S)
        await page.goto(console.url)
        await expect(page.locator('[data-dead="test"]')).to_have_text("0 dead")
        await expect(page.locator('[data-pending="test/ledger"]')).to_have_text("0")
        await expect(lag).to_have_text("7")  # the five, the flaky one, and it again, replayed
    finally:
        await stop()


def escalating_policy(tmp_path: Path) -> Path:
    """The shipped policy, plus one that escalates network access in Python files to Igor."""
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["policies"].append(
        {
            "id": "network-review@1",
            "rule": "forbidden_calls",
            "match": {"paths": ["*.py"]},
            "params": {"forbidden": ["socket.*"], "shell_calls": []},
            "on_violation": "escalate",
            "anchors": ["Igor"],
        }
    )
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


async def enforced(redis: RedisClient, keys: Keys, run: str) -> PacketEnvelope:
    """The enforcer's verdict on ``run``, once it is on the ``enforce`` stream."""
    found: list[PacketEnvelope] = []

    async def verdict() -> bool:
        for _, fields in stream_entries(await redis.xrange(keys.stream("enforce"))):
            envelope, payload = decode(fields, Verifier(KEYRING))
            if envelope.correlation_id == run and isinstance(payload, EnforcementCompleted):
                found.append(envelope)
        return bool(found)

    await wait_for(verdict, timeout=HANG_S)
    return found[0]


def validated(verdict: PacketEnvelope) -> list[PacketEnvelope]:
    """What the validator sends after an allowed run: its tests, its verification, the run's end."""
    done = EnforcementCompleted.model_validate(verdict.data)
    common = {"collection": done.collection, "folder": done.folder}
    tests = {"tests": 12, "passed": 12, "failed": 0, "errors": 0, "skipped": 0, "pass_rate": 1.0}
    payloads: list[Payload] = [
        extraction.TestsValidated(
            outcome="passed", ok=True, compiled=9, coverage_percent=96.5, duration_s=1.5, **tests, **common
        ),
        Verified(outcome="no drift", ok=True, **common),
        RunCompleted(outcome="passed", result="passed", phase="validate", **common),
    ]
    return [
        PacketEnvelope.new(
            type=registry.type_of(type(p)),
            source="agent://validator/validator-0",
            data=p.model_dump(mode="json"),
            correlation_id=verdict.correlation_id,
            causation_id=verdict.id,
        )
        for p in payloads
    ]


async def test_an_approved_escalation_lets_the_run_go_on_and_its_report_opens_verified(
    browser_page: Open,
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    stack: StackEndpoints,
    admin_dsn: str,
    namespace: str,
    agent_env: dict[str, str],
    tmp_path: Path,
) -> None:
    policy = escalating_policy(tmp_path)
    settings = settings_for(namespace, tmp_path, policy_file=policy)
    env = {**agent_env_of(settings, agent_env, admin_dsn), "L9_POLICY_FILE": str(policy)}
    spawn("auditor", env=env)
    spawn("enforcer", env=env)
    console, stop = await serve(settings, stack, admin_dsn)
    try:
        run = f"run-{uuid.uuid4().hex[:8]}"
        contents = {**clean_contents(PLAN), AGENT: NETWORK}
        generated = write_folder(tmp_path / "extractions" / run, PLAN, contents, run=run)
        await Publisher(redis, keys, signer).publish(
            PacketEnvelope.new(
                type="l9.generate.completed.v1",
                source="agent://generator/generator-0",
                data=generated.model_dump(mode="json"),
                correlation_id=run,
            )
        )
        page = await browser_page()
        await sign_in(page, console, "/governance")
        escalation = page.locator("[data-escalation]")
        await expect(escalation).to_contain_text("network-review@1")
        await escalation.locator("input[name=reason]").fill("reviewed: the socket is the service's own")
        await escalation.locator("[data-approve]").click()
        await expect(page.locator("#toast [data-notice=ok]")).to_contain_text("approved by Igor")

        await page.goto(f"{console.url}/runs/{run}")
        await expect(page.locator('[data-phase="enforce"]')).to_have_attribute("data-phase-status", "done")
        await expect(page.locator('[data-phase="enforce"]')).to_contain_text("approved by Igor")
        for envelope in validated(await enforced(redis, keys, run)):
            await Publisher(redis, keys, signer).publish(envelope)
        await expect(page.locator("[data-status]")).to_have_attribute("data-status", "passed")
        await page.locator("[data-open-report]").click()
        await expect(page.locator("[data-verified]")).to_have_attribute("data-verified", "ok")
        await expect(page.locator("#section-9")).to_contain_text("l9.governance.resolution.v1")
    finally:
        await stop()
