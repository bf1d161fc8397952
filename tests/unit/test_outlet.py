"""The fast way out: pre-built frames written per loop turn, falling back to the queue in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.bench.wsload import FrameParser
from services.gateway.connection import LAZY_MAX, Conn
from services.gateway.outlet import FLUSH_TURNS, Flusher, FrameCache, text_frame


class FakeOutlet:
    """A transport that records writes and can be paused like one under flow control."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = True
        self.written = asyncio.Event()

    def can_write(self) -> bool:
        return self.open

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.written.set()

    def messages(self) -> list[Any]:
        """Every WebSocket message written so far, decoded."""
        parser = FrameParser()
        out = []
        for op, payload in parser.feed(b"".join(self.writes)):
            assert op == 1
            out.append(json.loads(payload))
        assert not parser.buf
        return out


class Harness:
    def __init__(
        self, *, batch: bool = False, queue: int = 16, lazy_s: float = 0.0, flusher: Any = None
    ) -> None:
        self.outlet = FakeOutlet()
        self.sent: list[Any] = []
        self.flusher = flusher or Flusher(lazy_s)
        self.conn = Conn("chat", self._send, queue, "peer", self.outlet, self.flusher, batch=batch)
        self.conn.start()

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    async def turn(self) -> None:
        """Let the pending flush happen: the flusher waits ``FLUSH_TURNS`` loop turns through
        ``call_soon`` callbacks, so it has run when the test resumes (no timer involved)."""
        for _ in range(FLUSH_TURNS + 1):
            await asyncio.sleep(0)

    async def stop(self) -> None:
        await self.conn.stop()


@given(st.binary(max_size=70000))
def test_a_text_frame_is_what_a_parser_reads_back(payload: bytes) -> None:
    frame = text_frame(payload)
    assert FrameParser().feed(frame) == [(1, payload)]
    assert frame[0] == 0x81  # FIN, text, never masked


@pytest.mark.parametrize("n,head", [(125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_length_boundaries(n: int, head: int) -> None:
    assert len(text_frame(b"x" * n)) == n + head


def test_a_broadcast_is_framed_once_for_every_socket() -> None:
    cache = FrameCache()
    text = '{"type":"message"}'
    assert cache.frame(text) is cache.frame(text)
    texts = [text, '{"type":"typing"}']
    assert cache.batch(texts) is cache.batch(list(texts))
    assert FrameParser().feed(cache.batch(texts)) == [
        (1, b'[{"type":"message"},{"type":"typing"}]')
    ]
    assert cache.batch([text]) == cache.frame(text)  # one frame is never wrapped


async def test_frames_of_one_turn_leave_in_one_write_in_order() -> None:
    h = Harness()
    for i in range(5):
        h.conn.push(json.dumps({"n": i}))
    assert h.outlet.writes == []  # nothing before the turn ends
    await h.turn()
    assert len(h.outlet.writes) == 1
    assert h.outlet.messages() == [{"n": i} for i in range(5)]
    assert h.sent == []  # the ASGI path was not used
    await h.stop()


async def test_frames_of_the_next_turns_join_the_same_write() -> None:
    h = Harness()
    for i in range(FLUSH_TURNS + 1):
        h.conn.push(json.dumps({"n": i}))  # one frame in each turn the flush waits
        assert h.outlet.writes == []
        await asyncio.sleep(0)
    assert len(h.outlet.writes) == 1
    assert h.outlet.messages() == [{"n": i} for i in range(FLUSH_TURNS + 1)]
    h.conn.push('{"n":"later"}')  # after the flush: the next write
    await h.turn()
    assert len(h.outlet.writes) == 2
    await h.stop()


async def test_frames_that_may_wait_go_with_the_next_one_that_may_not_in_order() -> None:
    h = Harness(lazy_s=60.0)
    h.conn.push('{"n":0}', lazy=True)
    h.conn.push('{"n":1}', lazy=True)
    await h.turn()
    assert h.outlet.writes == []  # waiting for company
    h.conn.push('{"n":2}')
    h.conn.push('{"n":3}', lazy=True)
    await h.turn()
    assert len(h.outlet.writes) == 1
    assert h.outlet.messages() == [{"n": i} for i in range(4)]
    await h.stop()


async def test_frames_that_may_wait_go_out_on_their_own_after_the_wait() -> None:
    flusher = Flusher(0.02)
    a, b = Harness(lazy_s=0.02, flusher=flusher), Harness(lazy_s=0.02, flusher=flusher)
    for i in range(3):  # a burst of joins into a room: each member gets one write
        a.conn.push(json.dumps({"joined": i}), lazy=True)
        b.conn.push(json.dumps({"joined": i}), lazy=True)
        await a.turn()
    assert a.outlet.writes == b.outlet.writes == []
    await asyncio.wait_for(b.outlet.written.wait(), 5)
    for h in (a, b):
        assert len(h.outlet.writes) == 1
        assert h.outlet.messages() == [{"joined": i} for i in range(3)]
        await h.stop()


async def test_enough_frames_that_may_wait_are_not_kept_waiting() -> None:
    h = Harness(lazy_s=60.0, queue=1024)
    for i in range(LAZY_MAX):
        h.conn.push(json.dumps({"n": i}), lazy=True)
    await h.turn()
    assert h.outlet.messages() == [{"n": i} for i in range(LAZY_MAX)]
    await h.stop()


async def test_with_no_wait_configured_every_frame_is_flushed_alike() -> None:
    h = Harness(lazy_s=0.0)
    h.conn.push('{"n":0}', lazy=True)
    await h.turn()
    assert h.outlet.messages() == [{"n": 0}]
    await h.stop()


async def test_batch_sockets_get_one_json_array_per_turn() -> None:
    h = Harness(batch=True)
    h.conn.push('{"n":0}')
    await h.turn()
    for i in (1, 2, 3):
        h.conn.push(json.dumps({"n": i}))
    await h.turn()
    assert h.outlet.messages() == [{"n": 0}, [{"n": 1}, {"n": 2}, {"n": 3}]]
    await h.stop()


async def test_a_paused_transport_sends_through_the_queue_and_order_is_kept() -> None:
    h = Harness()
    h.conn.push('{"n":0}')
    h.outlet.open = False  # flow control paused the transport before the turn ended
    h.conn.push('{"n":1}')  # joins what waits, does not jump ahead through the queue
    await h.turn()  # the flusher finds the transport paused: both go to the writer task
    await h.conn.flushed()
    assert h.outlet.writes == []
    assert [json.loads(m["text"]) for m in h.sent] == [{"n": 0}, {"n": 1}]
    h.outlet.open = True
    h.conn.push('{"n":2}')  # the queue is empty again: the outlet takes it
    await h.turn()
    assert h.outlet.messages() == [{"n": 2}]
    await h.stop()


async def test_a_close_sends_what_waits_first() -> None:
    h = Harness()
    h.conn.push('{"n":0}')
    h.conn.close(1013, "slow consumer")
    await h.conn.flushed()
    assert [m["type"] for m in h.sent] == ["websocket.send", "websocket.close"]
    assert json.loads(h.sent[0]["text"]) == {"n": 0} and h.sent[1]["code"] == 1013
    await h.stop()


async def test_the_overflow_policy_holds_on_the_fast_path_too() -> None:
    h = Harness(queue=2)
    h.conn.push('{"n":0}')
    h.conn.push('{"n":1}')
    h.conn.push('{"typing":1}', droppable=True)  # full: dropped, the socket stays
    assert not h.conn.closed
    h.conn.push('{"n":2}')  # full: a slow consumer
    assert h.conn.closed and h.conn.close_code == 1013
    await h.stop()


async def test_replies_take_the_same_path() -> None:
    h = Harness()
    await h.conn.reply('{"reply":1}')
    assert h.conn._pump_task is None  # nothing before it in flight: released at once
    slow: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    await h.conn.reply(slow)
    await h.conn.reply('{"reply":3}')  # ready, but behind one that is not: it waits
    await h.turn()
    assert h.outlet.messages() == [{"reply": 1}]
    slow.set_result('{"reply":2}')
    assert h.conn._pump_task is not None
    await h.conn._pump_task  # the pump releases both replies, then ends
    await h.turn()
    h.conn.push('{"live":1}')
    await h.turn()
    assert h.outlet.messages() == [{"reply": 1}, {"reply": 2}, {"reply": 3}, {"live": 1}]
    assert h.sent == []
    await h.stop()


async def test_the_lean_receive_queue_hands_items_over_in_order_to_waiting_readers() -> None:
    from services.gateway.outlet import _LeanQueue

    q = _LeanQueue()
    assert q.empty()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)  # both wait
    q.put_nowait("a")
    q.put_nowait("b")
    assert await asyncio.wait_for(asyncio.gather(first, second), 1) == ["a", "b"]
    waiting = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    waiting.cancel()  # a reader that gives up (the auth timeout) leaves nothing behind
    q.put_nowait("c")
    assert not q.empty() and await q.get() == "c" and q.empty()


async def test_the_lean_event_wakes_every_waiter_on_set() -> None:
    from services.gateway.outlet import _LeanEvent

    ev = _LeanEvent()
    waiters = [asyncio.ensure_future(ev.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    ev.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    ev.clear()
    assert not ev.is_set()
    ev.set()
    assert await ev.wait() is True


class _Transport(asyncio.Transport):
    """Enough of a socket transport for a handshake: records what the protocol writes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_an_open_socket_keeps_its_state_in_slots_not_in_a_dict_of_its_own() -> None:
    """Over 30 attributes in its dict, every socket pays for a dict of its own (1.6 KB): this
    fails when a uvicorn upgrade adds attributes the slots do not name."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from services.gateway.outlet import OutletProtocol

    opened = asyncio.Event()
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        opened.set()
        await done.wait()

    config = Config(app, ws=OutletProtocol, ws_ping_interval=None, log_config=None)
    config.load()
    state = ServerState()
    protocol = OutletProtocol(config=config, server_state=state, app_state={})
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.wait_for(opened.wait(), 5)
    assert bytes(transport.out).startswith(b"HTTP/1.1 101 ")
    assert protocol.handshake_complete and protocol.scope["path"] == "/ws"
    assert vars(protocol) == {}
    done.set()
    await asyncio.wait_for(asyncio.gather(*state.tasks), 5)  # the ASGI call returns
    assert transport.closed


async def test_with_a_small_queue_frames_that_may_wait_never_close_a_healthy_socket() -> None:
    h = Harness(lazy_s=60.0, queue=16)
    for i in range(40):  # presence frames a loop turn apart: far more than the queue holds
        h.conn.push(json.dumps({"joined": i}), lazy=True)
        await asyncio.sleep(0)
    h.conn.push('{"n":"last"}')
    await h.turn()
    assert h.conn.close_code is None
    assert h.outlet.messages() == [{"joined": i} for i in range(40)] + [{"n": "last"}]
    await h.stop()


class SlowSocket:
    """A socket whose flush takes ``cost`` seconds of the flusher's clock (the system call per
    socket of a large room, added up); the clock is the loop's plus what flushes took."""

    def __init__(self, flusher: Flusher, clock: list[float], cost: float) -> None:
        self.flusher, self.clock, self.cost = flusher, clock, cost
        self.waiting = 0  # frames since the last flush
        self.writes: list[tuple[int, float]] = []  # (frames, loop time) of each flush
        self.flushed = asyncio.Event()

    def add(self) -> float:
        """One more frame, marked as ``Conn`` marks its first; the loop time."""
        self.waiting += 1
        if self.waiting == 1:
            self.flusher.mark(self)
        return asyncio.get_running_loop().time()

    def flush(self, cache: FrameCache) -> int:
        self.clock[0] += self.cost
        frames, self.waiting = self.waiting, 0
        self.writes.append((frames, asyncio.get_running_loop().time()))
        self.flushed.set()
        return frames

    async def next_flush(self) -> tuple[int, float]:
        self.flushed.clear()
        await asyncio.wait_for(self.flushed.wait(), 5)
        return self.writes[-1]


async def turns() -> None:
    for _ in range(FLUSH_TURNS + 1):
        await asyncio.sleep(0)


def clocked(cost: float) -> SlowSocket:
    loop, took = asyncio.get_running_loop(), [0.0]
    return SlowSocket(Flusher(clock=lambda: loop.time() + took[0]), took, cost)


async def test_while_flushes_keep_the_loop_busy_frames_wait_to_share_a_write() -> None:
    big = clocked(0.004)  # 4 ms a flush: a few hundred sockets' writes
    big.add()
    await turns()
    assert len(big.writes) == 1  # the first flush: nothing says the loop is busy yet
    big.add()  # the next message right after it: the loop is all flushes now
    await turns()
    assert len(big.writes) == 2
    t0 = big.add()
    big.add()  # a second message while the first waits
    await turns()
    assert len(big.writes) == 2  # corked
    frames, at = await big.next_flush()
    assert frames == 2  # both in one write
    assert at - t0 >= 0.004 - 0.001  # about as long as the last flush took
    big.add()  # it paid: still corked
    await turns()
    assert len(big.writes) == 3
    frames, _ = await big.next_flush()
    assert frames == 1  # nothing came to share it: the cork ends here
    big.add()
    await turns()
    assert len(big.writes) == 5


async def test_the_first_message_after_a_quiet_spell_goes_at_once() -> None:
    big = clocked(0.004)
    for _ in range(2):
        big.add()
        await turns()
    big.clock[0] += 1.0  # a second with nothing to flush
    big.add()
    await turns()
    assert len(big.writes) == 3


async def test_small_flushes_never_wait_however_often_they_come() -> None:
    small = clocked(0.0002)  # 0.2 ms: a room of a few dozen
    for i in range(10):
        small.add()
        await turns()
        assert len(small.writes) == i + 1


class Failing:
    def flush(self, cache: FrameCache) -> int:
        raise RuntimeError("boom")


async def test_a_socket_whose_flush_fails_leaves_the_others_and_later_flushes_alone() -> None:
    small = clocked(0.0)
    small.flusher.mark(Failing())
    small.add()
    await turns()
    assert len(small.writes) == 1
    small.add()
    await turns()
    assert len(small.writes) == 2
