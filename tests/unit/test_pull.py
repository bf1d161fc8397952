"""Credit for pull requests kept open: buffered plus owed never exceeds the window."""

from __future__ import annotations

import json
from collections import deque

from shared.bus.pull import Credit

CREDIT = Credit(window=512, chunk=256, expires_s=10.0, heartbeat_s=1.0)


def test_an_empty_reader_asks_for_the_whole_window_in_chunks() -> None:
    asked: deque[int] = deque()
    requests = [json.loads(r) for r in CREDIT.top_up(asked, 0)]
    assert [r["batch"] for r in requests] == [256, 256]
    assert requests[0]["expires"] == 10_000_000_000
    assert requests[0]["idle_heartbeat"] == 1_000_000_000
    assert list(asked) == [256, 256]


def test_it_tops_up_only_once_half_a_chunk_is_free() -> None:
    asked = deque([256, 200])  # 56 delivered and still buffered
    assert CREDIT.top_up(asked, 56) == []
    asked = deque([256, 100])  # room for 100: less than half a chunk, and requests are open
    assert CREDIT.top_up(asked, 56) == []
    asked = deque([156])  # the first request served, 300 free: one chunk, the rest waits
    got = [json.loads(r)["batch"] for r in CREDIT.top_up(asked, 56)]
    assert got == [256] and list(asked) == [156, 256]


def test_a_full_buffer_asks_for_nothing_but_a_starved_one_asks_for_what_fits() -> None:
    assert CREDIT.top_up(deque(), 512) == []
    asked: deque[int] = deque()
    got = [json.loads(r)["batch"] for r in CREDIT.top_up(asked, 500)]
    assert got == [12]  # less than half a chunk, but nothing is asked for: ask anyway
