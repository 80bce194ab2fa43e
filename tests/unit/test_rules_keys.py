"""The rules runtime's Redis keys: each Lua script's keys share a Redis Cluster slot, names
never collide, and definitions that cannot work are refused before Redis is asked anything."""

from __future__ import annotations

import pytest
from fakeredis import FakeAsyncRedis

from agents.rules import Episodic, Join, RuleError, Window
from agents.rules.keys import join_key, join_open_key, window_keys
from bus import Keys
from bus.connection import slot_of

KEYS = Keys("l9")
ODD = ["acct-1", "a:b", "a}b{c", "{tag}", "ключ", "a b", "a%3Ab", "x" * 256]


def test_a_windows_two_keys_share_a_slot_and_keys_spread() -> None:
    slots = set()
    for key in ODD:
        entries, ids = window_keys(KEYS, "fraud", "amounts", key)
        assert entries.startswith("l9:{l9.rules.fraud.amounts.") and entries.endswith("}:window:entries")
        assert slot_of(entries) == slot_of(ids)
        slots.add(slot_of(entries))
    assert len(slots) > 1  # a window's keys are spread over the cluster


def test_a_joins_keys_share_the_slot_of_its_open_set() -> None:
    open_key = join_open_key(KEYS, "shop", "ready")
    assert open_key == "l9:{l9.rules.shop.ready}:join:open"
    assert {slot_of(join_key(KEYS, "shop", "ready", key)) for key in ODD} == {slot_of(open_key)}
    assert slot_of(join_open_key(Keys("other"), "shop", "ready")) != slot_of(open_key)


def test_keys_of_different_texts_never_share_a_name() -> None:
    names = [window_keys(KEYS, "fraud", "amounts", key)[0] for key in [*ODD, "a%b", "a%25b", "a.b", "a_b"]]
    assert len(set(names)) == len(names)
    joins = [join_key(KEYS, "shop", "ready", key) for key in ODD]
    assert len(set(joins)) == len(joins)
    assert all("{" not in k.partition("}")[2] for k in names)  # one hash tag, the first


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: Window(r, KEYS, "fraud", "w"), r"^window w: state exactly one of last_s"),
        (
            lambda r: Window(r, KEYS, "fraud", "w", last_s=5, last_n=3),
            r"^window w: state exactly one of last_s",
        ),
        (
            lambda r: Window(r, KEYS, "fraud", "w", last_s=0),
            r"^window w: last_s must be a number of seconds > 0",
        ),
        (lambda r: Window(r, KEYS, "fraud", "w", last_n=0), r"^window w: last_n must be a whole number"),
        (
            lambda r: Window(r, KEYS, "fraud", "w", last_n=2.5),  # type: ignore[arg-type]
            r"^window w: last_n must be a whole number",
        ),
        (
            lambda r: Window(r, KEYS, "fraud", "w", last_s=5, ttl_s=9),
            r"^window w: ttl_s is for a window of last_n",
        ),
        (lambda r: Window(r, KEYS, "fraud", "w", last_n=5, ttl_s=-1), r"^window w: ttl_s must be a number"),
        (lambda r: Window(r, KEYS, "Fraud", "w", last_n=5), r"^agent: 'Fraud' is not a name"),
        (lambda r: Window(r, KEYS, "fraud", "a.b", last_n=5), r"^window: 'a.b' is not a name"),
        (lambda r: Join(r, KEYS, "shop", "j", ["a", "b"], window_s=0), r"^join j: window_s must be"),
        (lambda r: Join(r, KEYS, "shop", "j", "ab", window_s=1), r"^join j: types must be two or more"),
        (
            lambda r: Join(r, KEYS, "shop", "j", ["a", "b"], 5, closed_ttl_s=0),
            r"^join j: closed_ttl_s must be",
        ),
    ],
)
def test_a_definition_that_cannot_work_is_refused(make: object, message: str) -> None:
    redis = FakeAsyncRedis()
    with pytest.raises(RuleError, match=message):
        make(redis)  # type: ignore[operator]


async def test_bad_input_is_refused_before_redis_is_asked() -> None:
    redis = FakeAsyncRedis()
    window = Window(redis, KEYS, "fraud", "w", last_n=3)
    join = Join(redis, KEYS, "shop", "j", ["a", "b"], window_s=5)
    for call, message in [
        (window.add("k", float("inf"), "e", 1.0), r"^window w: value must be a finite number, got inf$"),
        (window.add("k", 1.0, "e", float("nan")), r"^window w: at must be a finite number, got nan$"),
        (window.add("k", True, "e", 1.0), r"^window w: value must be a finite number, got True$"),
        (window.add("", 1.0, "e", 1.0), r"^window w: the key must be 1 to 256 characters, got 0$"),
        (window.add("k" * 257, 1.0, "e", 1.0), r"^window w: the key must be 1 to 256 characters, got 257$"),
        (window.add("k", 1.0, "two words", 1.0), r"^window w: envelope id 'two words': want 1 to 200"),
        (
            join.offer("k", "a", {}, "e", float("inf")),
            r"^join j: at must be a finite number of seconds, got inf$",
        ),
        (join.offer("k", "a", [1], "e", 1.0), r"^join j: the payload of a must be a mapping, got list$"),  # type: ignore[arg-type]
        (join.expired(float("nan")), r"^join j: now must be a finite number of seconds, got nan$"),
        (join.expired(1.0, limit=0), r"^join j: limit must be a whole number >= 1, got 0$"),
    ]:
        with pytest.raises(RuleError, match=message):
            await call
    assert await redis.keys("*") == []


def test_the_episodic_migration_is_the_documented_ddl() -> None:
    sql = Episodic("postgresql://nowhere/db", "fraud", "alerts").migration_sql()
    assert sql == (
        'CREATE SCHEMA IF NOT EXISTS "l9_agent_fraud";\n'
        'CREATE TABLE IF NOT EXISTS "l9_agent_fraud"."alerts" (\n'
        "    envelope_id text PRIMARY KEY,\n"
        "    key text NOT NULL,\n"
        "    at timestamptz NOT NULL,\n"
        "    record jsonb NOT NULL\n"
        ");\n"
        'CREATE INDEX IF NOT EXISTS "alerts_key_at" ON "l9_agent_fraud"."alerts" (key, at DESC);\n'
    )
