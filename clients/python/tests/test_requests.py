from __future__ import annotations

import asyncio
import json
import re

import pytest
from fake_server import timeout

from atomic_guide_client import Backoff, QueueFull, ServerError
from atomic_guide_client._outbox import Outbox, Pending
from atomic_guide_client._requests import Requests
from atomic_guide_client.frames import (
    AckFrame,
    ErrorFrame,
    HistoryFrame,
    HistoryRequest,
    MessageRequest,
    TypingFrame,
)
from atomic_guide_client.payloads import MessagePayload, TypingInfo


class Written(list[str]):
    """Frames handed to the socket; ``changed`` is set on every write."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(timeout()):
            while len(self) < count:
                self.changed.clear()
                await self.changed.wait()


def make(max_pending: int = 8, retry_unavailable: int = 0) -> tuple[Requests, Written]:
    written = Written()

    def write(payload: str) -> bool:
        written.append(payload)
        written.changed.set()
        return True

    requests = Requests(
        max_pending=max_pending,
        retry_unavailable=retry_unavailable,
        backoff=Backoff(base=0.001, cap=0.001),
        write=write,
    )
    return requests, written


def message(text: str = "hi") -> MessageRequest:
    return MessageRequest(data=MessagePayload(content=text))


async def test_each_request_gets_a_fresh_32_hex_id_on_the_wire() -> None:
    requests, written = make()
    requests.create(message())
    requests.create(message())
    ids = [json.loads(p)["id"] for p in written]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert ids[0] != ids[1]


async def test_an_explicit_or_preset_id_is_kept() -> None:
    requests, written = make()
    requests.create(message(), request_id="mine-1")
    requests.create(MessageRequest(id="preset", data=MessagePayload(content="x")))
    assert [json.loads(p)["id"] for p in written] == ["mine-1", "preset"]


async def test_ids_must_be_1_to_64_chars_and_unique_while_pending() -> None:
    requests, _ = make()
    with pytest.raises(ValueError):
        requests.create(message(), request_id="x" * 65)
    requests.create(message(), request_id="dup")
    with pytest.raises(ValueError):
        requests.create(message(), request_id="dup")


async def test_the_queue_refuses_the_newcomer_when_full_and_keeps_what_it_has() -> None:
    requests, written = make(max_pending=2)
    first = requests.create(message("1"))
    requests.create(message("2"))
    with pytest.raises(QueueFull):
        requests.create(message("3"))
    assert len(requests) == 2 and len(written) == 2
    first.cancel()  # withdrawing one frees a slot (in a done-callback, run by the loop)
    await asyncio.wait([first])  # its callbacks ran in order: the withdrawal came first
    requests.create(message("3"))
    assert len(requests) == 2


async def test_internal_uncounted_requests_never_hit_the_bound() -> None:
    requests, _ = make(max_pending=1)
    requests.create(message())
    requests.create(message(), counted=False)
    assert len(requests) == 1


async def test_a_reply_resolves_the_future_with_its_data() -> None:
    requests, written = make()
    future = requests.create(HistoryRequest())
    rid = json.loads(written[0])["id"]
    reply = HistoryFrame(id=rid)
    entry = requests.match(reply)
    assert entry is not None
    requests.settle(entry, reply)
    assert (await future).has_more is False
    assert len(requests) == 0


async def test_frames_that_are_not_replies_are_not_correlated() -> None:
    requests, written = make()
    requests.create(message(), request_id="r1")
    typing = TypingFrame(id="r1", data=TypingInfo(user_id="u", is_typing=True))
    assert requests.match(typing) is None
    assert requests.match(AckFrame(id="other")) is None


async def test_an_error_reply_raises_server_error_with_code_message_and_data() -> None:
    requests, _ = make()
    future = requests.create(message(), request_id="r1")
    error = ErrorFrame(id="r1", error="too long", data={"code": "invalid_message", "f": 1})
    requests.settle(requests.match(error) or pytest.fail(), error)
    with pytest.raises(ServerError) as info:
        await future
    assert info.value.code == "invalid_message"
    assert info.value.message == "too long"
    assert info.value.data == {"code": "invalid_message", "f": 1}
    assert info.value.request_id == "r1"


async def test_unavailable_is_retried_with_the_same_id_before_failing() -> None:
    requests, written = make(retry_unavailable=1)
    future = requests.create(message(), request_id="r1")
    unavailable = ErrorFrame(id="r1", data={"code": "unavailable"})
    entry = requests.match(unavailable)
    assert entry is not None and requests.will_retry(entry, unavailable)
    requests.settle(entry, unavailable)
    await written.wait_for(2)  # the re-send happens after a backoff delay
    assert written[0] == written[1]
    assert not requests.will_retry(entry, unavailable)
    requests.settle(entry, unavailable)
    with pytest.raises(ServerError):
        await future


async def test_after_reconnect_only_requests_that_outlive_sockets_are_resent_in_order() -> None:
    requests, written = make()
    requests.create(message("a"), request_id="a")
    requests.create(message("scoped"), request_id="s", scoped=True)
    requests.create(message("b"), request_id="b")
    written.clear()
    requests.resend_all()
    assert [json.loads(p)["id"] for p in written] == ["a", "b"]


def test_outbox_counts_only_counted_entries() -> None:
    loop = asyncio.new_event_loop()
    try:
        outbox = Outbox(1)
        outbox.add(Pending("a", "message", "{}", loop.create_future()))
        outbox.add(Pending("b", "refresh", "{}", loop.create_future(), counted=False))
        assert len(outbox) == 1 and "b" in outbox
        with pytest.raises(QueueFull):
            outbox.add(Pending("c", "message", "{}", loop.create_future()))
        assert [e.id for e in outbox.pop_all()] == ["a", "b"] and len(outbox) == 0
    finally:
        loop.close()
