"""The hiredis-packing connection sends byte-for-byte what redis-py would."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.exceptions import DataError
from redis.typing import EncodableT

from bus import HiredisPackingConnection, connect

CASES: list[tuple[EncodableT, ...]] = [
    ("SET", "key", "value"),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETNAME", "x"),
    ("XADD", "l9:{s}", "*", "env", b"\x00\xff\x10binary", "n", 12, "f", 1.5, "u", "é"),
    ("XACK", b"k", "g", *[f"{i}-0" for i in range(50)]),
]


@pytest.mark.parametrize("args", CASES)
def test_packs_like_redis_py(args: tuple[EncodableT, ...]) -> None:
    ours = b"".join(HiredisPackingConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


def test_pipeline_packing_concatenates_commands_in_order() -> None:
    ours = b"".join(HiredisPackingConnection().pack_commands(CASES))
    theirs = b"".join(Connection().pack_commands(CASES))
    assert ours == theirs


@pytest.mark.parametrize("bad", [None, True])
def test_values_hiredis_refuses_fall_back_to_redis_py_errors(bad: object) -> None:
    with pytest.raises(DataError, match="Invalid input"):
        HiredisPackingConnection().pack_command("SET", "k", bad)


def test_bytearray_and_memoryview_still_pack() -> None:
    ours = HiredisPackingConnection().pack_command("SET", "k", bytearray(b"v"))
    assert b"".join(ours).endswith(b"$1\r\nv\r\n")


def test_connect_uses_it_for_tcp_only() -> None:
    tcp = connect("redis://127.0.0.1:1/0")
    unix = connect("unix:///tmp/nothing.sock")
    assert tcp.connection_pool.connection_class is HiredisPackingConnection
    assert unix.connection_pool.connection_class is not HiredisPackingConnection
