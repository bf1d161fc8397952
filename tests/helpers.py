"""Real processes for integration tests: nats-server, services, WebSocket clients.

Every process is started on loopback with ports nobody else holds and is stopped by its pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from shared.auth import mint_token
from shared.config import load_settings
from tests.conftest import T

SECRET = "test-secret-" + "x" * 64
ROOT = Path(__file__).resolve().parent.parent

# Settings that make timing behaviour testable quickly (each test may override).
TEST_ENV = {
    "AG_JWT_SECRET": SECRET,
    "AG_LOG_FORMAT": "console",
    "AG_LOG_LEVEL": "warning",
    "AG_AUTH_TIMEOUT_S": "2",
    "AG_TYPING_TTL_S": "1",
    "AG_HEARTBEAT_S": "0.5",
    "AG_COMMAND_TIMEOUT_S": "2",
    "AG_RECOVERY_MAX": "5",
    "AG_RATE_CONNECTIONS_PER_MINUTE": "10000",
    "AG_RATE_FRAMES_PER_MINUTE": "10000",
    "AG_RATE_BROADCASTS_PER_MINUTE": "10000",
    "AG_NATS_SYNC_INTERVAL": "always",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(
    sub: str,
    context: str | list[str] = "ctx",
    roles: tuple[str, ...] = ("learner",),
    ttl: float = 600,
    name: str | None = None,
    secret: str = SECRET,
) -> str:
    settings = load_settings({"AG_JWT_SECRET": secret})
    contexts = [context] if isinstance(context, str) else context
    return mint_token(
        settings,
        sub=sub,
        name=name or sub.title(),
        contexts=contexts,
        roles=roles,
        ttl=ttl,
        now=time.time(),
    )


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + T(timeout)
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)  # polling a condition another process changes
    raise TimeoutError(f"timed out waiting for {what}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except Exception:
        return 0


class Proc:
    def __init__(self, name: str, module: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.module = module
        self.env = env
        self.log = log
        self.p: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.p = subprocess.Popen(
            [sys.executable, "-m", self.module], env=self.env, stdout=out, stderr=out, cwd=ROOT
        )
        out.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(T(timeout))
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        code = self.p.returncode
        self.p = None
        return code

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


class Stack:
    """nats-server + chat service + N gateways, as real processes on loopback."""

    def __init__(self, tmp: Path, nats_url: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.nats_url = nats_url
        self.env = {**os.environ, **TEST_ENV, "AG_NATS_URL": nats_url, "AG_DATA_DIR": str(tmp)}
        self.env.update(env or {})
        self.services: dict[str, Proc] = {}
        self.gateways: list[tuple[Proc, int]] = []

    def start_service(self, name: str, module: str | None = None) -> Proc:
        # A stable worker id, as `up` and compose give: a restart takes its leases back at once.
        env = {**self.env, "AG_WORKER_ID": name}
        proc = Proc(name, module or f"services.{name}", env, self.tmp / f"{name}.log")
        proc.start()
        self.services[name] = proc
        return proc

    def start_gateway(self, env: dict[str, str] | None = None) -> int:
        port = free_port()
        genv = {**self.env, "AG_GATEWAY_PORT": str(port), **(env or {})}
        idx = len(self.gateways)
        proc = Proc(f"gateway{idx}", "services.gateway", genv, self.tmp / f"gateway{idx}.log")
        proc.start()
        self.gateways.append((proc, port))
        wait_until(
            lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200,
            30,
            f"gateway on {port} ready\n{proc.tail()}",
        )
        return port

    def url(self, path: str = "/api/chat/ws", gateway: int = 0, **query: Any) -> str:
        port = self.gateways[gateway][1]
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{port}{path}" + (f"?{qs}" if qs else "")

    def http(self, path: str, gateway: int = 0) -> str:
        return f"http://127.0.0.1:{self.gateways[gateway][1]}{path}"

    async def stop_gateway(self, index: int = 0) -> int | None:
        """SIGTERM gateway ``index`` (it closes its sockets with 1001) and wait for it to exit.

        Runs in a thread so that clients on this event loop can finish their close handshakes.
        """
        proc = self.gateways[index][0]
        return await asyncio.to_thread(proc.stop)

    async def restart_gateway(self, index: int = 0) -> int:
        """Start gateway ``index`` again on the port it had (clients reconnect to the same URL)."""
        proc, port = self.gateways[index]
        if proc.p is not None:
            raise RuntimeError(f"{proc.name} is still running")
        proc.start()
        await asyncio.to_thread(
            wait_until,
            lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200,
            30,
            f"gateway on {port} ready again\n{proc.tail()}",
        )
        return port

    def stop(self) -> None:
        for proc, _ in self.gateways:
            proc.stop()
        for proc in self.services.values():
            proc.stop()


async def wait_chat_ready(nats_url: str, timeout: float = 30) -> None:
    """The chat service answers history once its projection is rebuilt."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + T(timeout)
        while True:
            try:
                await nc.request("ag.rpc.chat.history", b'{"contextId":"__probe__"}', timeout=1)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError("chat service not ready") from None
                await asyncio.sleep(0.1)  # polling until another process answers
    finally:
        await nc.close()


async def wait_collab_ready(nats_url: str, timeout: float = 30) -> None:
    """The collaboration service answers a snapshot request once it has started."""
    import msgspec
    import nats

    from shared.schemas.commands import CollabSnapshotRequest

    probe = msgspec.msgpack.encode(CollabSnapshotRequest("__probe__", "__probe__"))
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + T(timeout)
        while True:
            try:
                await nc.request("ag.rpc.collab", probe, timeout=1)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError("collaboration service not ready") from None
                await asyncio.sleep(0.1)  # polling until another process answers
    finally:
        await nc.close()


READY = {"chat": wait_chat_ready, "collaboration": wait_collab_ready}


async def start_service_ready(stack: Stack, name: str) -> Proc:
    """Start (or restart) a service of ``stack`` and wait until it answers."""
    proc = stack.services.get(name)
    if proc is None:
        proc = stack.start_service(name)
    else:
        proc.start()
    await READY[name](stack.nats_url)
    return proc


def unmodelled_fields(value: Any, type_: Any, path: str = "$") -> list[str]:
    """JSON paths of the keys in ``value`` that the msgspec type ``type_`` does not declare.

    For wire-schema checks: a client Struct that ignores unknown fields would silently drop
    what the server sends. Parts typed ``Any`` or ``dict[str, Any]`` are open and not searched.
    """
    import msgspec

    return _unmodelled(value, msgspec.inspect.type_info(type_), path)


def _unmodelled(value: Any, info: Any, path: str) -> list[str]:
    from msgspec import inspect as mi

    if isinstance(info, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in info.fields}
        found: list[str] = []
        for key, item in value.items():
            if key == info.tag_field:
                continue
            field = fields.get(key)
            if field is None:
                found.append(f"{path}.{key}")
            else:
                found += _unmodelled(item, field.type, f"{path}.{key}")
        return found
    if isinstance(info, mi.ListType) and isinstance(value, list):
        return [
            p
            for i, item in enumerate(value)
            for p in _unmodelled(item, info.item_type, f"{path}[{i}]")
        ]
    if isinstance(info, mi.DictType) and isinstance(value, dict):
        return [
            p
            for k, item in value.items()
            for p in _unmodelled(item, info.value_type, f"{path}.{k}")
        ]
    if isinstance(info, mi.UnionType):
        for alternative in info.types:
            if isinstance(alternative, mi.StructType) and isinstance(value, dict):
                return _unmodelled(value, alternative, path)
            if isinstance(alternative, mi.ListType) and isinstance(value, list):
                return _unmodelled(value, alternative, path)
    return []


async def log_entries(nc: Any, subject: str, start: int = 1) -> list[Any]:
    """The log's entries on ``subject`` (``Entry``: seq, subject, data), read over ``nc``."""
    from shared.bus.nats import NatsBus

    return await NatsBus(load_settings({}), nc).read(subject, start)


class Client:
    """A real WebSocket client that reads frames by type, keeping the others for later."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    open: list[Client] = []  # closed after each test (tests/conftest.py)

    @classmethod
    async def connect(cls, url: str, **kw: Any) -> Client:
        ws = await websockets.connect(url, open_timeout=T(10), **kw)
        client = cls(ws)
        cls.open.append(client)
        return client

    @classmethod
    async def close_all(cls) -> None:
        clients, cls.open = cls.open, []
        for c in clients:
            try:
                await asyncio.wait_for(c.ws.close(), T(2))
            except Exception:  # the server is gone, or the socket already closed
                c.ws.transport.abort()

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), T(timeout))
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def expect(
        self,
        type: str | tuple[str, ...],
        timeout: float = 5,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next frame of ``type`` (or of any of several types) matching ``where``; earlier
        other frames are kept."""
        types = (type,) if isinstance(type, str) else type
        for i, f in enumerate(self.seen):
            if f["type"] in types and (where is None or where(f)):
                return self.seen.pop(i)
        deadline = time.monotonic() + T(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {type!r} frame; saw {[f['type'] for f in self.seen]}")
            raw = await asyncio.wait_for(self.ws.recv(), left)
            frame = json.loads(raw)
            if frame["type"] in types and (where is None or where(frame)):
                return frame
            self.seen.append(frame)

    async def request(
        self, frame: dict[str, Any], reply: str, timeout: float = 5
    ) -> dict[str, Any]:
        await self.send(frame)
        return await self.expect(reply, timeout, where=lambda f: f.get("id") == frame.get("id"))

    async def closed(self, timeout: float = 10) -> int | None:
        """Wait for the server to close; returns the close code."""
        try:
            while True:
                raw = await asyncio.wait_for(self.ws.recv(), T(timeout))
                self.seen.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
