"""The token-expiry wheel: nothing early, nothing twice, refiling and discarding win."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given
from hypothesis import strategies as st

from services.gateway.expiry import Expiries, ExpiryWheel
from tests.conftest import T

ops = st.lists(
    st.tuples(
        st.sampled_from(["file", "discard", "due"]),
        st.integers(0, 5),  # item
        st.floats(0, 20, allow_nan=False),  # time
    ),
    max_size=60,
)


@given(ops)
def test_the_wheel_matches_a_plain_model(steps: list[tuple[str, int, float]]) -> None:
    wheel: ExpiryWheel[int] = ExpiryWheel(resolution=0.5)
    model: dict[int, float] = {}  # item -> its expiry
    now = 0.0
    for op, item, at in steps:
        if op == "file":
            wheel.file(item, at)
            model[item] = at
        elif op == "discard":
            wheel.discard(item)
            model.pop(item, None)
        else:
            now = max(now, at)
            got = wheel.due(now)
            assert len(got) == len(set(got))
            for x in got:  # never early, and at most one step late
                assert model[x] <= now
            expected = {x for x, t in model.items() if t <= now - wheel.resolution}
            assert expected <= set(got)
            for x in got:
                del model[x]
        assert len(wheel) == len(model)
        nxt = wheel.next_at()
        assert (nxt is None) == (not model)
        if model:
            assert nxt is not None and min(model.values()) <= nxt
            assert nxt <= min(model.values()) + wheel.resolution


def test_due_gives_the_earliest_slot_first() -> None:
    wheel: ExpiryWheel[str] = ExpiryWheel()
    wheel.file("late", 30.2)
    wheel.file("early", 10.5)
    wheel.file("moved", 5.0)
    wheel.file("moved", 40.0)  # refiled: only the new time counts
    assert wheel.due(9.9) == []
    assert wheel.due(31) == ["early", "late"]
    assert wheel.next_at() == 40.0 and wheel.due(100) == ["moved"]
    assert wheel.next_at() is None


async def test_one_timer_expires_every_socket_in_its_time() -> None:
    fired: list[tuple[str, float]] = []
    done = asyncio.Event()

    def expire(name: str) -> None:
        fired.append((name, time.time()))
        if len(fired) == 2:
            done.set()

    exp: Expiries[str] = Expiries(expire, resolution=0.05)
    start = time.time()
    exp.set("b", start + 0.3)
    exp.set("a", start + 0.1)  # earlier than the armed timer: re-armed
    exp.set("gone", start + 0.05)
    exp.discard("gone")
    exp.set("refreshed", start + 0.15)
    exp.set("refreshed", start + 3600)
    await asyncio.wait_for(done.wait(), T(5))
    assert [n for n, _ in fired] == ["a", "b"]
    assert fired[0][1] >= start + 0.1 and fired[1][1] >= start + 0.3
    assert len(exp.wheel) == 1  # "refreshed" waits for its new time


def test_sockets_coming_and_going_within_one_second_leave_nothing_behind() -> None:
    wheel: ExpiryWheel[int] = ExpiryWheel()
    for i in range(10_000):
        wheel.file(i, 3600.5)
        wheel.discard(i)
    assert len(wheel) == 0
    assert len(wheel._order) <= 1  # the heap does not grow with churn (one key per second)
    assert wheel.next_at() is None and not wheel._order and not wheel._queued
