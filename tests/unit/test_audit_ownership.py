"""Which auditor writes which chain: the assignment over the live members, the leases, and
the keeper that gives chains up and takes them as auditors come and go."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from agents.auditor.ownership import ChainKeeper
from memory.audit.chains import Layout
from memory.audit.ownership import LeaseBoard, assignment, owner, wanted

members_st = st.sets(st.integers(0, 255), min_size=1, max_size=12)


@given(members_st, st.integers(1, 64))
def test_every_chain_has_one_live_writer_and_the_chains_spread_evenly(members: set[int], chains: int) -> None:
    given_to = assignment(members, chains)
    assert set(given_to) == set(range(chains)), "no chain is left without a writer"
    assert set(given_to.values()) <= members
    loads = [list(given_to.values()).count(m) for m in members]
    assert max(loads) <= math.ceil(chains / len(members))
    for me in members:
        assert wanted(me, members, chains) == {c for c, m in given_to.items() if m == me}
    assert all(owner(c, members, chains) == given_to[c] for c in range(chains))


@given(members_st, st.integers(1, 64))
def test_every_auditor_computes_the_same_assignment_whatever_order_it_sees_members_in(
    members: set[int], chains: int
) -> None:
    assert assignment(sorted(members, reverse=True), chains) == assignment(sorted(members), chains)


def test_no_member_no_assignment() -> None:
    assert assignment(set(), 4) == {} and owner(0, set(), 4) is None


async def test_a_chain_lease_is_held_by_one_member_until_released_or_closed() -> None:
    board = LeaseBoard()
    a, b = board.join(), board.join()
    assert (a.member, b.member) == (0, 1)
    assert await a.take(3) and not await b.take(3)
    assert a.held == {3} and b.held == frozenset()
    await a.release(3)
    assert await b.take(3) and b.held == {3}
    await b.close()
    assert await a.members() == {0} and await a.take(3)


async def test_keepers_split_the_chains_and_take_over_those_of_one_that_leaves() -> None:
    board, layout = LeaseBoard(), Layout(4)
    first = ChainKeeper(board.join(), layout, interval_s=0.01, drain_s=0.01)
    await first.rebalance()
    assert first.owned == {0, 1, 2, 3}
    assert first.partitions() == list(range(64)) and first.owns("plan")
    second = ChainKeeper(board.join(), layout, interval_s=0.01, drain_s=0.01)
    await second.rebalance()  # its chains are still the first's
    assert second.owned == frozenset()
    await first.rebalance()  # gives up the second's share
    await second.rebalance()
    assert first.owned | second.owned == {0, 1, 2, 3} and not first.owned & second.owned
    assert len(first.owned) == len(second.owned) == 2
    assert set(second.partitions()) == {p for p in range(64) if p % 4 in second.owned}
    assert all(first.owns(s) != second.owns(s) for s in ("plan", "validation", "artifact", "report"))
    await second.close()  # it stops (or dies): its leases go
    await first.rebalance()
    assert first.owned == {0, 1, 2, 3}
