"""Fast unit tests of the bus and agents pieces that need no pending-entry semantics (fakeredis)."""

from __future__ import annotations

from binascii import crc_hqx
from collections.abc import AsyncIterator
from pathlib import Path

import fakeredis
import pytest

from agents import Agent, Context, Runtime, handles
from agents.runner import load_agent
from bus import PARTITIONS, Delivery, DeliveryPolicy, Keys, PartitionSet, Publisher, Topology, partition_of
from bus.connection import RedisClient, execute_many, slot_of
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode, payload
from l9.settings import Settings
from tests.conftest import stream_entries

KEYRING = {"k": b"unit-secret"}


@payload("l9.unit.order.v1")
class Order(Payload):
    item: str


@payload("l9.unit.shipped.v1")
class Shipped(Payload):
    item: str


@pytest.fixture
async def fake() -> AsyncIterator[RedisClient]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def test_keys_share_a_hash_tag_per_stream_family() -> None:
    keys = Keys("ns")
    part = partition_of("demo.tasks")
    assert part == crc_hqx(b"demo.tasks", 0) % PARTITIONS
    assert keys.stream("demo.tasks") == f"ns:{{ns.p{part}}}:demo.tasks"
    assert keys.dead("demo.tasks") == f"ns:{{ns.p{part}}}:demo.tasks:dead"
    assert keys.errors("demo.tasks") == f"ns:{{ns.p{part}}}:demo.tasks:errors"
    assert keys.index_of("demo.tasks") == f"ns:{{ns.p{part}}}:streams"
    assert keys.escalations_pending("demo.tasks") == f"ns:{{ns.p{part}}}:demo.tasks:pending"
    assert keys.name_of(keys.stream("demo.tasks")) == "demo.tasks"
    with pytest.raises(ValueError, match="stream name 'Bad Name'"):
        keys.stream("Bad Name")
    with pytest.raises(ValueError, match="not a stream key"):
        keys.name_of("other:{x}")
    with pytest.raises(ValueError, match="not a stream key"):
        keys.name_of(keys.dead("demo.tasks"))
    with pytest.raises(ValueError, match="wrong partition"):
        keys.name_of(f"ns:{{ns.p{(part + 1) % PARTITIONS}}}:demo.tasks")


def test_every_key_of_a_stream_family_is_in_one_slot_and_namespaces_spread() -> None:
    for name in ("plan", "generated", "rpc.0f3a", "governance.resolutions"):
        keys = Keys("prod")
        family = {keys.stream(name), keys.dead(name), keys.errors(name), keys.index_of(name)}
        family |= {keys.escalations_pending(name), keys.escalations_resolved(name)}
        assert len({slot_of(k) for k in family}) == 1, family
    # the plan streams of different namespaces, and their rate limits, are in different slots
    assert len({slot_of(Keys(ns).stream("plan")) for ns in ("a", "b", "c", "d")}) == 4
    assert len({slot_of(Keys(ns).rate_limit("p", "s")) for ns in ("a", "b", "c", "d")}) == 4
    assert slot_of(Keys("a").rate_limit("p", "s1")) == slot_of(Keys("a").rate_limit("q", "s2"))
    # a namespace's streams spread over its partitions
    assert len({partition_of(f"s{i}") for i in range(1000)}) == PARTITIONS


def test_a_partition_share_takes_every_partition_once_between_its_processes() -> None:
    shares = [PartitionSet.parse(f"{i}/3") for i in range(3)]
    taken = [p for share in shares for p in share.partitions()]
    assert sorted(taken) == list(range(PARTITIONS))
    assert PartitionSet().partitions() == list(range(PARTITIONS))
    assert shares[partition_of("plan") % 3].owns("plan")
    assert str(shares[2]) == "2/3"
    for bad in ("3/3", "1", "a/b", "0/0", f"0/{PARTITIONS + 1}"):
        with pytest.raises(ValueError, match="partition share"):
            PartitionSet.parse(bad)


def test_acl_key_patterns_of_the_policy_file_follow_the_key_layout() -> None:
    keys = Keys("l9")
    assert keys.family_pattern("{ratelimit}:*") == "l9:{l9.ratelimit}:*"
    assert keys.family_pattern("{governance.resolutions}:*") == keys.stream("governance.resolutions") + ":*"
    assert keys.family_pattern("demo:*") == "l9:demo:*"
    assert keys.family_pattern("streams") == "l9:{l9.p*}:streams"  # every partition's index


def test_topology_routes_by_pattern_then_by_area() -> None:
    topo = Topology({"l9.demo.task.*": "demo.tasks"})
    assert topo.stream_for("l9.demo.task.v1") == "demo.tasks"
    assert topo.stream_for("l9.demo.other.v3") == "demo"
    assert topo.stream_for("l9.extraction.request.v1") == "extraction"
    with pytest.raises(ValueError, match="does not match"):
        topo.stream_for("not-a-type")


def test_policy_backoff_is_exponential_and_capped() -> None:
    policy = DeliveryPolicy(retry_backoff_ms=100, retry_backoff_max_ms=1000)
    assert [policy.backoff_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    with pytest.raises(ValueError, match="concurrency"):
        DeliveryPolicy(concurrency=10, max_in_flight=5)
    with pytest.raises(ValueError, match="heartbeat_ms"):
        DeliveryPolicy(heartbeat_ms=1000, lease_ms=1500)


def test_settings_refuse_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L9_HEARTBEAT_MS", "5000")
    monkeypatch.setenv("L9_LEASE_MS", "6000")
    with pytest.raises(ValueError, match="L9_HEARTBEAT_MS"):
        Settings()
    monkeypatch.delenv("L9_HEARTBEAT_MS")
    monkeypatch.delenv("L9_LEASE_MS")
    monkeypatch.setenv("L9_SIGNING_KEYS", "{not json")
    with pytest.raises(ValueError, match="L9_SIGNING_KEYS is not a JSON object"):
        Settings()


def test_key_file_is_created_once_and_reused(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L9_HOME", str(tmp_path))
    first = Settings().keyring()
    again = Settings().keyring()
    assert first == again and len(first["dev"]) == 64


async def test_publisher_batches_signed_entries_with_readable_headers(fake: RedisClient) -> None:
    keys = Keys("u")
    pub = Publisher(fake, keys, Signer(KEYRING, "k"), Topology())
    envs = [
        PacketEnvelope.new(type="l9.unit.order.v1", source="agent://u/1", data={"item": str(i)})
        for i in range(3)
    ]
    ids = await pub.publish_many(envs)
    assert len(ids) == 3
    rows = stream_entries(await fake.xrange(keys.stream("unit")))
    assert [r[0].decode() for r in rows] == ids
    fields = rows[1][1]
    assert fields[b"type"] == b"l9.unit.order.v1" and fields[b"id"] == envs[1].id.encode()
    env, order = decode(fields, Verifier(KEYRING))
    assert env.id == envs[1].id and order == Order(item="1")
    assert await fake.smembers(keys.index_of("unit")) == {b"unit"}


class Shop(Agent):
    name = "shop"
    consumes = ("unit",)

    @handles(Order)
    async def on_order(self, ctx: Context[Order]) -> None:
        await ctx.emit(Shipped(item=ctx.payload.item))


async def test_emitted_envelopes_carry_causation_correlation_and_sequence(fake: RedisClient) -> None:
    keys = Keys("u")
    rt = Runtime(
        redis=fake,
        keys=keys,
        signer=Signer(KEYRING, "k"),
        verifier=Verifier(KEYRING),
        agent="shop",
        instance="shop-0",
        topology=Topology(),
    )
    shop = Shop(rt)
    order = PacketEnvelope.new(type="l9.unit.order.v1", source="agent://u/1", data={"item": "tea"})
    for attempt in (1, 2):
        delivery = Delivery("unit", "1-0", order, Order(item="tea"), attempt, {})
        await shop.handle(delivery)
        # held for the acknowledgement's round trip, which the consumer sends
        assert [c[0] for c in delivery.emits if c[0] == "XADD"] == ["XADD"]
        assert await fake.xlen(keys.stream("unit")) == attempt - 1
        await execute_many(fake, delivery.emits)
    rows = stream_entries(await fake.xrange(keys.stream("unit")))
    shipped = [decode(r[1], Verifier(KEYRING))[0] for r in rows]
    assert [e.type for e in shipped] == ["l9.unit.shipped.v1"] * 2
    assert {e.causation_id for e in shipped} == {order.id}
    assert {e.correlation_id for e in shipped} == {order.id}
    assert [e.sequence for e in shipped] == [0, 1]
    assert {e.source for e in shipped} == {"agent://shop/shop-0"}


async def test_unhandled_registered_type_is_ignored(fake: RedisClient) -> None:
    rt = Runtime(
        redis=fake,
        keys=Keys("u"),
        signer=Signer(KEYRING, "k"),
        verifier=Verifier(KEYRING),
        agent="shop",
        instance="shop-0",
    )
    other = PacketEnvelope.new(type="l9.unit.shipped.v1", source="agent://u/1", data={"item": "x"})
    await Shop(rt).handle(Delivery("unit", "1-0", other, Shipped(item="x"), 1, {}))
    assert await fake.keys("*") == []


def test_load_agent_names_what_is_wrong() -> None:
    assert load_agent("squarer").name == "squarer"
    assert load_agent("tests.unit.test_bus_units:Shop") is Shop
    with pytest.raises(ValueError, match="unknown agent 'nope'"):
        load_agent("nope")
    with pytest.raises(ValueError, match="is not an Agent subclass"):
        load_agent("tests.unit.test_bus_units:Order")


def test_audit_keys_come_from_the_key_file_and_verifying_never_creates_one(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.audit_trusted() == {}  # nothing to check signatures with, and no key made
    assert not (tmp_path / "audit-key.hex").exists()
    key = settings.audit_signing_key()  # signing creates it (0600), once
    assert (tmp_path / "audit-key.hex").stat().st_mode & 0o777 == 0o600
    assert settings.audit_signing_key().public_bytes == key.public_bytes
    assert settings.audit_trusted() == key.trusted()
    extra = Settings(home=tmp_path, audit_trusted_keys={"old": "ab" * 32})
    assert extra.audit_trusted() == {**key.trusted(), "old": bytes.fromhex("ab" * 32)}
    with pytest.raises(ValueError, match="does not exist"):
        Settings(home=tmp_path, audit_key_file=tmp_path / "missing").audit_signing_key()
    (tmp_path / "bad.hex").write_text("zz")
    with pytest.raises(ValueError, match="32-byte Ed25519 seed"):
        Settings(home=tmp_path, audit_key_file=tmp_path / "bad.hex").audit_signing_key()
