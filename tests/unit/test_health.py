"""``l9 health``: which heartbeat keys are probed and how the verdict reads (fakeredis)."""

from __future__ import annotations

import os

import anyio
import fakeredis
import pytest

from bus import Keys
from l9.health import CANDIDATES, Heartbeats, Request, Target, candidate_names, judge, live_consumers, parse
from l9.settings import Settings

KEYS = Keys("ns")


def test_candidates_are_the_lowest_names_then_the_named_instances() -> None:
    names = candidate_names("sympy", instances=("blue", "3"))
    assert names[:3] == ["sympy-0", "sympy-1", "sympy-2"]
    assert names[-1] == "sympy-blue" and names.count("sympy-3") == 1
    assert len(names) == CANDIDATES + 1


async def test_only_existing_heartbeat_keys_of_that_agent_count() -> None:
    redis = fakeredis.FakeAsyncRedis()
    await redis.set(KEYS.heartbeat("sympy-0"), "{}", px=5000)
    await redis.set(KEYS.heartbeat("sympy-7"), "{}", px=5000)
    await redis.set(KEYS.heartbeat("sympy-blue"), "{}", px=5000)
    await redis.set(KEYS.heartbeat("planner-1"), "{}", px=5000)  # another agent
    await redis.set(Keys("other").heartbeat("sympy-1"), "{}", px=5000)  # another namespace
    await redis.set(KEYS.heartbeat("sympy-2"), "{}", px=1)  # lapsed
    await anyio.sleep(0.02)
    await redis.set(KEYS.heartbeat("sympy-3"), "{}")
    await redis.delete(KEYS.heartbeat("sympy-3"))  # released on SIGTERM
    live = await live_consumers(redis, KEYS, candidate_names("sympy"))
    assert live == ("sympy-0", "sympy-7")
    assert await live_consumers(redis, KEYS, candidate_names("sympy", ["blue"])) == (*live, "sympy-blue")
    await redis.aclose()


@pytest.mark.parametrize(
    ("live", "minimum", "healthy", "reason"),
    [
        (("sympy-0",), 1, True, "sympy: 1 live consumer(s): sympy-0"),
        (("sympy-0", "sympy-4"), 2, True, "sympy: 2 live consumer(s): sympy-0, sympy-4"),
        ((), 1, False, "sympy: no live consumer (no heartbeat key ns:hb:sympy-*)"),
        (("sympy-0",), 3, False, "sympy: 1 live consumer(s), fewer than 3 (ns:hb:sympy-*)"),
    ],
)
def test_the_verdict_says_why(live: tuple[str, ...], minimum: int, healthy: bool, reason: str) -> None:
    health = judge("sympy", live, minimum, KEYS)
    assert (health.healthy, health.reason, health.live) == (healthy, reason, live)
    assert "\n" not in health.reason


def test_many_consumers_are_summarised_on_one_line() -> None:
    live = tuple(f"auditor-{n}" for n in range(12))
    reason = judge("auditor", live, 1, KEYS).reason
    assert reason.endswith("auditor-7, ... (12 in all)") and "auditor-8" not in reason


# -- the console script's own reading of the settings and arguments (l9.entry) ------------------

ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"REDIS_URL": "redis://a:1/0", "L9_NAMESPACE": "prod", "L9_REDIS_CLUSTER": "yes", "L9_HOME": "/srv/l9"},
    {"L9_REDIS_URL": "redis://b:2/0", "l9_namespace": "lower.case", "L9_HOME": "~/l9"},
    {"REDIS_URL": "", "L9_REDIS_URL": "redis://c:3/0"},  # the first alias set wins, even empty
    {"REDIS_URL": "redis://d:4/0", "L9_REDIS_URL": "redis://e:5/0", "L9_REDIS_CLUSTER": "no"},
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting of the process's own environment leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("L9_") or name.upper() in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("environ", ENVIRONMENTS)
def test_the_console_script_reads_the_settings_as_the_settings_model_does(
    environ: dict[str, str], clean_env: pytest.MonkeyPatch
) -> None:
    for name, value in environ.items():
        clean_env.setenv(name, value)
    assert Target.from_env(os.environ) == Target.of(Settings())
    keys = Keys(Target.from_env(os.environ).namespace)
    assert Heartbeats(keys.namespace).heartbeat("sympy-3") == keys.heartbeat("sympy-3")


@pytest.mark.parametrize(("name", "value"), [("L9_NAMESPACE", "two words"), ("L9_REDIS_CLUSTER", "maybe")])
def test_a_setting_the_model_refuses_is_refused_too(
    name: str, value: str, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Target.from_env(os.environ)
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize(
    ("args", "request_"),
    [
        (["sympy"], Request("sympy")),
        (["--json", "sympy", "--min", "2"], Request("sympy", 2, (), True)),
        (
            ["sympy", "--instance", "blue", "--instance=green", "--min=3"],
            Request("sympy", 3, ("blue", "green")),
        ),
        # left to the full CLI, which answers them in its own words
        ([], None),
        (["--help"], None),
        (["sympy", "--min", "0"], None),
        (["sympy", "--min", "two"], None),
        (["sympy", "--min"], None),
        (["sympy", "planner"], None),
        (["sym*"], None),
        (["sympy", "--verbose"], None),
        (["sympy", "--json=yes"], None),
    ],
)
def test_the_console_script_answers_plain_health_requests_only(
    args: list[str], request_: Request | None
) -> None:
    assert parse(args) == request_
