"""Partition ownership: the fair-share plan, and leases moving between workers on the in-memory
twin of the lease bucket (the contract suite checks the twin against NATS's KV)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.bus.memory import MemoryBus
from shared.ownership import Ownership, plan, worker_id


def test_a_lone_worker_claims_every_partition() -> None:
    claim, give_up = plan(16, "a", [], {})
    assert sorted(claim) == list(range(16)) and give_up == []


def test_a_worker_over_its_share_gives_the_highest_up_when_another_joins() -> None:
    holders = dict.fromkeys(range(16), "a")
    claim, give_up = plan(16, "a", ["a", "b"], holders)
    assert claim == [] and give_up == list(range(8, 16))
    claim, give_up = plan(16, "b", ["a", "b"], {p: "a" for p in range(8)})
    assert sorted(claim) == list(range(8, 16)) and give_up == []


def test_partitions_of_a_dead_worker_are_not_taken_while_its_leases_hold() -> None:
    # "c" is gone (no worker lease) but its partition leases have not lapsed yet.
    holders = {p: "c" for p in range(10)}
    claim, _ = plan(16, "a", ["a", "b"], holders)
    assert set(claim) <= set(range(10, 16))


@given(
    n=st.integers(1, 64),
    workers=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=6, unique=True),
    owners=st.dictionaries(st.integers(0, 63), st.sampled_from("abcdef")),
)
def test_a_plan_never_claims_a_held_partition_nor_exceeds_the_share(
    n: int, workers: list[str], owners: dict[int, str]
) -> None:
    holders = {p: w for p, w in owners.items() if p < n}
    me = workers[0]
    claim, give_up = plan(n, me, workers, holders)
    assert not set(claim) & set(holders)
    assert set(give_up) <= {p for p, w in holders.items() if w == me}
    mine = {p for p, w in holders.items() if w == me} - set(give_up) | set(claim)
    assert len(mine) <= -(-n // len(set(workers)))


def test_worker_ids_are_key_tokens() -> None:
    assert worker_id("chat-1") == "chat-1"
    assert worker_id("host.example/7") == "host-example-7"
    assert worker_id("")  # host and pid


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def worker(bus: MemoryBus, name: str, log: list[tuple[str, int, bool]]) -> Ownership:
    async def gain(p: int) -> None:
        log.append((name, p, True))

    async def lose(p: int) -> None:
        log.append((name, p, False))

    return Ownership(bus.leases(), "chat", name, 16, bus.lease_s, gain, lose)


def owners_now(log: list[tuple[str, int, bool]]) -> dict[int, set[str]]:
    """Who owns each partition after each change in order; fails on two owners at once."""
    owned: dict[int, set[str]] = {}
    for name, p, gained in log:
        holders = owned.setdefault(p, set())
        if gained:
            assert not holders, f"partition {p}: {name} gained it while {holders} held it"
            holders.add(name)
        else:
            holders.discard(name)
    return owned


async def test_partitions_rebalance_on_join_and_move_on_when_a_worker_dies() -> None:
    clock = Clock()
    bus = MemoryBus(clock=clock, lease_s=3.0)
    log: list[tuple[str, int, bool]] = []
    a, b = worker(bus, "a", log), worker(bus, "b", log)
    await a.step()
    assert len(a.held) == 16
    await b.step()  # nothing free yet: a gives up its extras on its next round
    assert b.held == {}
    await a.step()
    await b.step()
    assert len(a.held) == len(b.held) == 8
    assert not set(a.held) & set(b.held)
    owners_now(log)  # never two owners of one partition on the way
    # a dies (no more rounds): its leases lapse, b takes them
    clock.now += 2.0
    await b.step()
    assert len(b.held) == 8
    clock.now += 1.5
    await b.step()
    assert len(b.held) == 16


async def test_a_refused_renewal_stops_the_partition_at_once() -> None:
    clock = Clock()
    bus = MemoryBus(clock=clock, lease_s=3.0)
    log: list[tuple[str, int, bool]] = []
    a, b = worker(bus, "a", log), worker(bus, "b", log)
    await a.step()
    clock.now += 4.0  # a was paused past its lease; b claims everything meanwhile
    await b.step()
    assert len(b.held) == 16
    await a.step()  # a's renewals are refused: it stops before doing anything else
    assert a.held == {}
    assert [(n, g) for n, _, g in log if n == "a"].count(("a", False)) == 16


async def test_stop_hands_partitions_back_without_waiting_for_the_lapse() -> None:
    clock = Clock()
    bus = MemoryBus(clock=clock, lease_s=3.0)
    log: list[tuple[str, int, bool]] = []
    a, b = worker(bus, "a", log), worker(bus, "b", log)
    await a.step()
    await a.stop()
    await b.step()
    assert len(b.held) == 16
    owners_now(log)


async def test_a_restarted_worker_with_the_same_id_takes_its_leases_back_at_once() -> None:
    bus = MemoryBus(clock=Clock(), lease_s=3.0)
    log: list[tuple[str, int, bool]] = []
    await worker(bus, "a", log).step()  # then the process dies (SIGKILL): nothing released
    again = worker(bus, "a", log)
    await again.step()
    assert len(again.held) == 16
