"""Pull requests kept open with credit: buffered plus owed never exceeds the window."""

from __future__ import annotations

import json

from shared.bus.pull import Credit, Requests

CREDIT = Credit(window=512, chunk=256, expires_s=10.0, heartbeat_s=1.0)


def batches(requests: list[bytes]) -> list[int]:
    return [json.loads(r)["batch"] for r in requests]


def test_an_empty_reader_asks_for_the_whole_window_in_chunks() -> None:
    asked = Requests(CREDIT)
    requests = [json.loads(r) for r in asked.top_up(0)]
    assert [r["batch"] for r in requests] == [256, 256]
    assert requests[0]["expires"] == 10_000_000_000
    assert requests[0]["idle_heartbeat"] == 1_000_000_000
    assert asked.owed() == 512


def test_it_tops_up_only_once_half_a_chunk_is_free() -> None:
    asked = Requests(CREDIT)
    asked.top_up(0)
    asked.served(156)  # 156 arrived, 100 of them handed out: 56 buffered, room for 100
    assert asked.owed() == 356
    assert asked.top_up(56) == []  # less than half a chunk, and requests are open
    asked.served(200)  # the first request served, 300 free: one chunk, the rest waits
    assert batches(asked.top_up(56)) == [256]
    assert asked.owed() + 56 <= 512


def test_a_full_buffer_asks_for_nothing_but_a_starved_one_asks_for_what_fits() -> None:
    assert Requests(CREDIT).top_up(512) == []
    assert batches(Requests(CREDIT).top_up(500)) == [12]  # nothing asked for: ask anyway


def test_statuses_keep_the_requests_alive_retire_the_oldest_or_say_re_create() -> None:
    asked = Requests(CREDIT)
    asked.top_up(0)
    asked.served(6)
    assert asked.status("100") and asked.status("404") and asked.owed() == 506
    assert asked.status("408") and asked.owed() == 256  # the oldest (250 still owed) expired
    assert not asked.status("409")
    assert not asked.status("")
    asked.clear()
    assert not asked and asked.owed() == 0
