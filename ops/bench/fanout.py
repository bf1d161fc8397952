"""Fan-out benchmark: one room x N subscribers, the server side on one core, against bare Litestar.

The server side (nats-server and every service, or the bare Litestar broadcast of
``ops/bench/bare_litestar.py``) is pinned to core 0 and this load generator to core 1. For each
server, in one run:

- the highest publish rate into the room with 0 loss and p99 <= 100 ms (publish -> each
  subscriber), found by doubling then bisecting; its deliveries/s and the server's CPU us per
  delivery (every server process; the gateway alone);
- p50/p99 at half that rate;
- connections opened per second and idle memory per connection (``--idle`` sockets more, the
  gateway's RSS before and after).

The project is measured with one frame per WebSocket message and, again, with ``batch=1``.
Rate limits are raised by this run's own settings (``BenchStack``), never by changing defaults.
    atomic-guide bench fanout --subscribers 1000 --idle 5000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops.bench.harness import BenchStack, cpu_seconds, p50_p99_ms, rss_bytes
from ops.bench.wsload import LoadSocket, open_socket
from shared import subjects

SERVER_CPUS = {0}
LOAD_CPUS = {1}
ROOM = "fanout"
P99_LIMIT_S = 0.100
MARK = re.compile(rb"@(\d+):(\d+)@")
PAD = "x" * 40
SAMPLE = 10  # every 10th subscriber times each message
_STEP_NOS = itertools.count(0, 100)  # a ~120-byte chat message with its JSON around it


@dataclass
class Target:
    name: str
    url: Callable[[str, str], str]  # (user, room) -> ws url
    ready_marker: bytes  # the frame that says a socket is set up
    frame: Callable[[int, int, int], str]  # (step, i, t_ns) -> what the publisher sends
    pids: list[int]
    gateway_pid: int


@dataclass
class Recorder:
    """Counts the room's messages on every socket; every ``SAMPLE``-th socket also reads each
    message's send time for the latency figures (scanning them all would make the load
    generator, not the server, the limit)."""

    step: int = -1
    got: int = 0  # messages of this step (a step starts once the last one has drained)
    seen: int = 0  # messages of any step (stragglers of a failed step included)
    expected: int = 0
    lat_ns: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _sockets: int = 0

    def begin(self, step: int, expected: int) -> None:
        self.step, self.got, self.expected, self.lat_ns = step, 0, expected, []
        self.done.clear()

    def handler(self) -> Callable[[LoadSocket, bytes], None]:
        self._sockets += 1
        return self.on_text if self._sockets % SAMPLE == 1 else self.on_count

    def on_count(self, sock: LoadSocket, payload: bytes) -> None:
        n = payload.count(b'"type":"message"')
        if n:
            self.seen += n
            self.got += n
            if self.got >= self.expected:
                self.done.set()

    def on_text(self, sock: LoadSocket, payload: bytes) -> None:
        now = time.perf_counter_ns()
        for step, t in MARK.findall(payload):
            self.seen += 1
            if int(step) == self.step:
                self.got += 1
                self.lat_ns.append(now - int(t))
        if self.got >= self.expected:
            self.done.set()


def _ignore(sock: LoadSocket, payload: bytes) -> None:
    return None


async def _open(url: str, marker: bytes, on_text: Callable[[LoadSocket, bytes], None]) -> Any:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def first(sock: LoadSocket, payload: bytes) -> None:
        if marker in payload and not ready.done():
            sock.on_text = on_text
            ready.set_result(None)
        on_text(sock, payload)

    sock: LoadSocket = await open_socket(url, first)
    await asyncio.wait_for(ready, 60)
    return sock


async def _open_many(
    urls: list[str], marker: bytes, handler: Callable[[], Callable[[LoadSocket, bytes], None]]
) -> tuple[list[LoadSocket], float]:
    """Open every url, at most 100 handshakes at once; the sockets and connections/s."""
    gate = asyncio.Semaphore(100)

    async def one(url: str) -> LoadSocket:
        async with gate:
            sock: LoadSocket = await _open(url, marker, handler())
            return sock

    t0 = time.perf_counter()
    socks = await asyncio.gather(*(one(u) for u in urls))
    return list(socks), len(urls) / (time.perf_counter() - t0)


async def _step(
    target: Target, pub: LoadSocket, rec: Recorder, n: int, rate: float, seconds: float, no: int
) -> dict[str, Any]:
    total = max(int(rate * seconds), 2)
    rec.begin(no, total * n)
    cpu0, gw0 = cpu_seconds(target.pids), cpu_seconds([target.gateway_pid])
    load0 = cpu_seconds([os.getpid()])
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pub.send_text(target.frame(no, i, time.perf_counter_ns()))
    try:
        await asyncio.wait_for(rec.done.wait(), 2.0 + P99_LIMIT_S)
    except TimeoutError:
        pass
    cpu, gw = cpu_seconds(target.pids) - cpu0, cpu_seconds([target.gateway_pid]) - gw0
    load = cpu_seconds([os.getpid()]) - load0
    wall = time.perf_counter() - t0
    lat = p50_p99_ms([x / 1e9 for x in rec.lat_ns])
    lost = rec.expected - rec.got
    res = {
        "rate": round(rate, 1),
        "deliveries_per_s": round(rec.got / wall),
        "lost": lost,
        **lat,
        "cpu_us_per_delivery": round(cpu / max(rec.got, 1) * 1e6, 2),
        "gateway_us_per_delivery": round(gw / max(rec.got, 1) * 1e6, 2),
        "server_cores": round(cpu / wall, 2),
        "load_generator_cores": round(load / wall, 2),  # near 1.0: the generator was the limit
        "ok": lost == 0 and lat["p99"] <= P99_LIMIT_S * 1000,
    }
    if not res["ok"]:  # let the backlog of a failed step drain before the next one
        last, quiet_since = rec.seen, time.perf_counter()
        while time.perf_counter() - quiet_since < 0.5:
            await asyncio.sleep(0.1)  # polling a counter the sockets bump
            if rec.seen != last:
                last, quiet_since = rec.seen, time.perf_counter()
    print(f"  {target.name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return res


async def _sweep(
    target: Target, n: int, seconds: float, start: float, query: str = ""
) -> dict[str, Any]:
    rec = Recorder()
    subs, conn_rate = await _open_many(
        [target.url(f"sub{i}", ROOM) + query for i in range(n)], target.ready_marker, rec.handler
    )
    pub = await _open(target.url("publisher", ROOM), target.ready_marker, _ignore)
    await asyncio.sleep(1.0)  # let the join broadcasts settle before timing
    steps, no = [], next(_STEP_NOS)  # unique over the run: the ids must not repeat
    first = no
    best: dict[str, Any] | None = None
    rate, fail = start, None
    while no - first < 20:
        res = await _step(target, pub, rec, n, rate, seconds, no)
        no += 1
        if not res["ok"] and res["lost"] == 0:  # one hiccup of a shared machine: look again
            res = await _step(target, pub, rec, n, rate, seconds, no)
            no += 1
        steps.append(res)
        if any(s.closed.done() for s in subs):
            raise RuntimeError(f"{target.name}: a subscriber was closed during the sweep")
        if res["ok"]:
            best = res
            if fail is None:
                rate *= 2
                continue
        else:
            fail = rate
        if best is None:
            rate /= 2
            continue
        if fail / best["rate"] < 1.1:
            break
        rate = (best["rate"] + fail) / 2
    half = None
    if best is not None:  # twice, the better one kept (one hiccup of a shared machine)
        halves = [
            await _step(target, pub, rec, n, best["rate"] / 2, seconds, no + k) for k in (0, 1)
        ]
        half = min(halves, key=lambda r: (not r["ok"], r["p99"]))
    for s in [*subs, pub]:
        s.close()
    return {"best": best, "half": half, "connect_per_s_in_room": round(conn_rate), "steps": steps}


async def _quiet(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until the server side is idle (under 10% of a core over 0.5 s): the sockets the
    sweep closed are still being torn down when it returns (a room of 1,000 sees 1,000
    ``user_left``), and that is no part of setting up the next ones."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        await asyncio.sleep(0.5)  # a measuring window, not synchronisation
        if cpu_seconds(pids) - cpu0 < 0.1 * (time.monotonic() - t0):
            return


async def _idle(target: Target, count: int, per_room: int) -> dict[str, Any]:
    await _quiet(target.pids)
    before = rss_bytes(target.gateway_pid)
    urls = [target.url(f"idle{i}", f"idle-{i // per_room}") for i in range(count)]
    gw0 = cpu_seconds([target.gateway_pid])
    socks, rate = await _open_many(urls, target.ready_marker, lambda: _ignore)
    gw = cpu_seconds([target.gateway_pid]) - gw0
    await asyncio.sleep(1.0)  # let the join broadcasts settle
    after = rss_bytes(target.gateway_pid)
    for s in socks:
        s.close()
    return {
        "connections": count,
        "connect_per_s": round(rate),
        "connect_per_gateway_cpu_s": round(count / max(gw, 0.01)),  # per core of the gateway
        "kb_per_connection": round((after - before) / count / 1024, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bare(n: int, seconds: float, idle: int) -> dict[str, Any]:
    port = _free_port()
    log = open(tempfile.mkstemp(prefix="ag-bare-", suffix=".log")[1], "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.bench.bare_litestar", str(port)],
        stdout=log,
        stderr=log,
        preexec_fn=lambda: os.sched_setaffinity(0, SERVER_CPUS),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the bare server did not start") from None
                time.sleep(0.1)  # waiting for another process's port
        stamp = "2026-01-01T00:00:00.000Z"

        def frame(step: int, i: int, t: int) -> str:
            # The shape and size of the project's message frame, so both move the same bytes.
            return (
                f'{{"type":"message","timestamp":"{stamp}","data":{{"id":"{i:032x}",'
                f'"seq":{i},"content":"@{step}:{t}@ {PAD}","messageType":"text",'
                f'"author":{{"id":"publisher","name":"publisher"}},"timestamp":"{stamp}"}}}}'
            )

        target = Target(
            "bare-litestar",
            lambda user, room: f"ws://127.0.0.1:{port}/ws",
            b'"connected"',
            frame,
            [proc.pid],
            proc.pid,
        )
        out = asyncio.run(_sweep(target, n, seconds, 16))
        out["idle"] = asyncio.run(_idle(target, idle, 100))
        return out
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _project(n: int, seconds: float, idle: int) -> dict[str, Any]:
    services = ["chat", "analytics", "collaboration", "gateway"]
    out: dict[str, Any] = {}
    with BenchStack(services, cpus=SERVER_CPUS) as stack:

        def frame(step: int, i: int, t: int) -> str:
            content = f"@{step}:{t}@ {PAD}"
            data = {"content": content}
            return json.dumps({"type": "message", "id": f"s{step}-{i}", "data": data})

        pids = stack.pids
        target = Target(
            "project",
            stack.chat_url,
            b'"type":"presence"',
            frame,
            list(pids.values()),
            pids["gateway"],
        )
        out = asyncio.run(_sweep(target, n, seconds, 16))
        target.name = "project batch=1"
        out["batched"] = asyncio.run(_sweep(target, n, seconds, 16, "&batch=1"))
        out["idle"] = asyncio.run(_idle(target, idle, 100))
    return out


def _durable(rate: float) -> dict[str, Any]:
    """The durable path at ``rate`` msg/s over rooms of 10, on both cores (not pinned)."""
    os.sched_setaffinity(0, SERVER_CPUS | LOAD_CPUS)
    with BenchStack(["chat", "analytics", "collaboration", "gateway"]) as stack:
        low = asyncio.run(_acks(stack.chat_url, 10, 10, 20))
        pids = {**stack.pids, "load": os.getpid()}  # nats-server and every service
        high = asyncio.run(_acks(stack.chat_url, 100, 10, rate, pids))
        assert stack.nats is not None
        raw = asyncio.run(_raw_appends(stack.nats.url, 100, rate))
    os.sched_setaffinity(0, LOAD_CPUS)
    return {"low": low, "high": high, "raw_jetstream": raw}


async def _raw_appends(nats_url: str, rooms: int, rate: float) -> dict[str, Any]:
    """The baseline under the durable path: the same rate of appends (one fsync each, with the
    per-room expected-last-sequence check) straight from nats-py to the event stream."""
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    last: dict[int, int] = {}
    lat: list[float] = []
    ends: list[asyncio.Task[None]] = []

    async def one(room: int, i: int) -> None:
        subject = subjects.chat_messages(f"raw-{room}")
        headers = {"Nats-Msg-Id": f"raw-{i}"}
        if room in last:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last[room])
        t0 = time.perf_counter()
        ack = await js.publish(subject, b'{"type":"raw"}', headers=headers)
        lat.append(time.perf_counter() - t0)
        last[room] = ack.seq

    total = int(rate * 5)
    t0 = time.perf_counter()
    busy: dict[int, asyncio.Task[None]] = {}
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        room = i % rooms
        if room in busy:  # one append in flight per room, as the chat service does
            await busy[room]
        busy[room] = asyncio.create_task(one(room, i))
        ends.append(busy[room])
    await asyncio.gather(*ends)
    await nc.close()
    return {"rate": rate, "rooms": rooms, "appends": len(lat), **p50_p99_ms(lat)}


async def _acks(
    url: Callable[[str, str], str],
    rooms: int,
    per_room: int,
    rate: float,
    pids: dict[str, int] | None = None,
) -> Any:
    """The durable path: ``rate`` messages/s spread over ``rooms`` rooms of ``per_room``
    members (each member sends in turn), send -> ack per message; with ``pids``, the cores each
    of those processes used from the first send to the last ack."""
    sent: dict[bytes, int] = {}
    lat: list[float] = []
    ack_id = re.compile(rb'"id":"(a\d+)"')

    def on_text(sock: LoadSocket, payload: bytes) -> None:
        if payload.startswith(b'{"type":"ack"'):
            found = ack_id.search(payload)
            if found and found.group(1) in sent:
                lat.append((time.perf_counter_ns() - sent.pop(found.group(1))) / 1e9)

    urls = [url(f"acker{i}", f"acks-{i // per_room}") for i in range(rooms * per_room)]
    socks, _ = await _open_many(urls, b'"type":"presence"', lambda: on_text)
    total = int(rate * 5)
    cpu0 = {k: cpu_seconds([p]) for k, p in (pids or {}).items()}
    t0 = time.perf_counter()
    for i in range(total):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        mid = f"a{i}"
        sent[mid.encode()] = time.perf_counter_ns()
        frame = {"type": "message", "id": mid, "data": {"content": f"ack {i}"}}
        socks[(i % rooms) * per_room + (i // rooms) % per_room].send_text(json.dumps(frame))
    deadline = time.perf_counter() + 10
    while sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)  # polling for the last acks
    wall = time.perf_counter() - t0
    cores = {k: round((cpu_seconds([p]) - cpu0[k]) / wall, 2) for k, p in (pids or {}).items()}
    for sock in socks:
        sock.close()
    return {
        "rate": rate,
        "rooms": rooms,
        "members": per_room,
        "acked": len(lat),
        "missing": len(sent),
        **p50_p99_ms(lat),
        **({"cores": cores} if cores else {}),
    }


def _row(name: str, r: dict[str, Any]) -> str:
    b, h = r["best"] or {}, r["half"] or {}
    return (
        f"| {name} | {b.get('deliveries_per_s', 0):,} | {b.get('rate', 0)} | "
        f"{b.get('cpu_us_per_delivery', '-')} | {b.get('gateway_us_per_delivery', '-')} | "
        f"{h.get('p50', '-')} / {h.get('p99', '-')} | {r['connect_per_s_in_room']} |"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--idle", type=int, default=5000, help="idle sockets for the memory figure")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one rate step")
    p.add_argument("--only", default="bare,project,acks", help="any of bare, project, acks")
    p.add_argument("--ack-rate", type=float, default=1000, help="msg/s for the durable path")
    p.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    a = p.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("bench fanout needs two cores: the server on one, the load on the other")
    os.sched_setaffinity(0, LOAD_CPUS)
    results: dict[str, Any] = {}
    if "bare" in a.only:
        results["bare"] = _bare(a.subscribers, a.seconds, a.idle)
    if "project" in a.only:
        results["project"] = _project(a.subscribers, a.seconds, a.idle)
    if "acks" in a.only:
        results["acks"] = _durable(a.ack_rate)
    if a.json:
        print(json.dumps(results, indent=2))
    print(f"\n1 room x {a.subscribers} subscribers, server side on one core (0), load on core 1")
    print(
        "| server | deliveries/s (0 loss, p99 <= 100 ms) | msg/s | server CPU us/delivery "
        "| gateway us/delivery | p50 / p99 ms at half rate | connections/s (into the room) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = [("bare Litestar", "bare"), ("this project", "project")]
    for name, key in rows:
        if key in results:
            print(_row(name, results[key]))
    if "project" in results:
        print(_row("this project, batch=1", results["project"]["batched"]))
    for key in ("bare", "project"):
        if key in results:
            print(f"{key} idle: {json.dumps(results[key]['idle'])}")
    if "acks" in results:
        for key, what in (
            ("low", "one at a time"),
            ("high", "under load"),
            ("raw_jetstream", "baseline: nats-py appends alone"),
        ):
            print(f"durable path {what}, send -> ack (ms): {json.dumps(results['acks'][key])}")
    if "bare" in results and "project" in results:
        base = (results["bare"]["best"] or {}).get("deliveries_per_s", 0)
        for label, r in (("", results["project"]), (" batch=1", results["project"]["batched"])):
            ours = (r["best"] or {}).get("deliveries_per_s", 0)
            print(f"ratio project{label} / bare: {ours / base:.2f}x" if base else "no baseline")


if __name__ == "__main__":
    main()
