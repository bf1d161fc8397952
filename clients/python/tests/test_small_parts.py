"""Rate limiter, URL building, settings validation, dispatch and the chat sequencer."""

from __future__ import annotations

import logging

import pytest

from atomic_guide_client import ClientSettings
from atomic_guide_client._dispatch import Handlers, Inbox
from atomic_guide_client._ratelimit import SlidingWindow
from atomic_guide_client._sequencer import Sequencer
from atomic_guide_client._urls import endpoint_url, with_query
from atomic_guide_client.frames import MessageFrame, PongFrame
from atomic_guide_client.payloads import Author, ChatMessage


def test_sliding_window_lets_limit_frames_through_then_waits_for_the_oldest() -> None:
    window = SlidingWindow(limit=2, window=60.0)
    for now in (0.0, 1.0):
        assert window.wait_time(now) == 0.0
        window.record(now)
    assert window.wait_time(2.0) == pytest.approx(58.0)
    assert window.wait_time(60.0) == 0.0  # the first one left the window
    window.reset()
    assert window.wait_time(2.0) == 0.0


def test_a_bare_url_gets_the_endpoint_path_and_http_becomes_ws() -> None:
    assert endpoint_url("http://h:8080", "/api/chat/ws") == "ws://h:8080/api/chat/ws"
    assert endpoint_url("https://h/", "/api/chat/ws") == "wss://h/api/chat/ws"
    assert endpoint_url("ws://h/custom/ws", "/api/chat/ws") == "ws://h/custom/ws"
    with pytest.raises(ValueError):
        endpoint_url("ftp://h", "/x")


def test_query_parameters_are_url_encoded_and_replace_existing_ones() -> None:
    url = with_query("ws://h/p?a=1&token=old", {"token": "a.b+c", "contextId": "ctx 1"})
    assert url == "ws://h/p?a=1&token=a.b%2Bc&contextId=ctx+1"


@pytest.mark.parametrize(
    "bad",
    [
        {"auth_mode": "cookie"},
        {"ping_interval": 0},
        {"max_pending": 0},
        {"frames_per_minute": 0},
        {"refresh_margin": -1},
    ],
)
def test_bad_settings_fail_loudly(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ClientSettings(**bad)  # type: ignore[arg-type]


async def test_inbox_drops_the_oldest_frame_when_full_and_counts_it() -> None:
    inbox = Inbox(2)
    for i in range(3):
        inbox.put(PongFrame(id=str(i)))
    assert inbox.dropped == 1
    assert [(await inbox.get()).id for _ in range(2)] == ["1", "2"]


async def test_inbox_ends_with_the_closing_error_after_the_waiting_frames() -> None:
    inbox = Inbox(5)
    inbox.put(PongFrame(id="last"))
    inbox.close(RuntimeError("gone"))
    assert (await inbox.get()).id == "last"
    with pytest.raises(RuntimeError):
        await inbox.get()


def test_a_failing_callback_is_logged_and_the_others_still_run() -> None:
    handlers = Handlers(logging.getLogger("test"))
    seen: list[str] = []

    def boom(frame: object) -> None:
        raise RuntimeError("bug")

    handlers.add("pong", boom)
    handlers.add("*", lambda f: seen.append("any"))
    remove = handlers.add("pong", lambda f: seen.append("pong"))
    handlers.dispatch(PongFrame())
    remove()
    handlers.dispatch(PongFrame())
    assert seen == ["pong", "any", "any"]


def msg(seq: int) -> MessageFrame:
    author = Author(id="u", name="U")
    return MessageFrame(data=ChatMessage(id=f"m{seq}", seq=seq, content=str(seq), author=author))


def test_live_messages_pass_through_once() -> None:
    seq = Sequencer()
    assert [f.data.seq for f in seq.push(msg(1))] == [1]
    assert seq.push(msg(1)) == []
    assert [f.data.seq for f in seq.push(msg(5))] == [5]  # seq may jump
    assert seq.push(msg(3)) == []  # too late to deliver in order
    assert seq.last_seq == 5


def test_recovery_holds_and_then_releases_sorted_without_duplicates() -> None:
    seq = Sequencer(last_seq=3)
    seq.begin_recovery()
    for n in (6, 2, 4, 6, 3, 5):
        assert seq.push(msg(n)) == []
    assert seq.oldest_held() == 4
    assert [f.data.seq for f in seq.end_recovery()] == [4, 5, 6]
    assert seq.last_seq == 6 and not seq.recovering
