"""A throwaway stack for benchmarks: its own nats-server and services on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ops.natsd import NatsServer, start_nats

__all__ = ["BenchStack", "cpu_seconds", "p50_p99_ms", "pin", "rss_bytes"]


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus`` (what ``taskset -a -p`` does); threads it starts
    later inherit the mask."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that just ended
            pass


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (all their threads) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def p50_p99_ms(seconds: list[float]) -> dict[str, float]:
    """Median and 99th percentile of durations, in milliseconds (0 for none)."""
    xs = sorted(seconds) or [0.0]
    return {
        "p50": round(xs[len(xs) // 2] * 1000, 2),
        "p99": round(xs[int(len(xs) * 0.99)] * 1000, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchStack:
    def __init__(
        self,
        services: list[str],
        env: dict[str, str] | None = None,
        sync_interval: str = "always",
        cpus: set[int] | None = None,
        workers: int = 1,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ag-bench-"))
        # chat and collaboration run as `workers` processes each, with ids chat-1, chat-2, …
        self.services = [
            f"{name}-{i}" if workers > 1 and name in ("chat", "collaboration") else name
            for name in services
            for i in range(1, (workers if name in ("chat", "collaboration") else 1) + 1)
        ]
        self.sync_interval = sync_interval
        self.cpus = cpus  # the whole server side pinned here (NATS and every service)
        self.secret = secrets.token_urlsafe(48)
        self.port = _free_port()
        self.env = {
            **os.environ,
            "AG_JWT_SECRET": self.secret,
            "AG_DATA_DIR": str(self.dir),
            "AG_GATEWAY_PORT": str(self.port),
            "AG_LOG_LEVEL": "warning",
            "AG_RATE_CONNECTIONS_PER_MINUTE": "1000000",
            "AG_RATE_FRAMES_PER_MINUTE": "100000000",
            "AG_RATE_BROADCASTS_PER_MINUTE": "100000000",
            "AG_OUTBOUND_QUEUE": "100000",
            **(env or {}),
        }
        self.nats: NatsServer | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self._settings: Any = None

    def __enter__(self) -> BenchStack:
        self.nats = start_nats(self.dir, self.sync_interval, self.dir / "nats.log")
        self.env["AG_NATS_URL"] = self.nats.url
        if self.cpus is not None:
            pin(self.nats.process.pid, self.cpus)
        asyncio.run(self._provision())
        for name in self.services:
            log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115
            module = "services." + name.split("-")[0]
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module],
                    env={**self.env, "AG_WORKER_ID": name},
                    stdout=log,
                    stderr=log,
                    preexec_fn=self._pin_child if self.cpus else None,
                )
            )
        deadline = time.monotonic() + 60
        while not self._ready():
            if time.monotonic() > deadline:
                self.__exit__()  # a stack that never came up leaves no process behind
                raise TimeoutError(f"bench stack not ready; logs in {self.dir}")
            time.sleep(0.1)  # polling readiness of other processes
        return self

    def _pin_child(self) -> None:
        assert self.cpus is not None
        os.sched_setaffinity(0, self.cpus)

    def __exit__(self, *_: Any) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.nats:
            self.nats.stop()

    async def _provision(self) -> None:
        import nats

        from ops.streams import ensure_streams

        assert self.nats is not None
        from shared.config import load_settings

        st = load_settings(self.env)
        nc = await nats.connect(self.nats.url)
        await ensure_streams(nc.jetstream(), 1, st.dedup_window_s, st.partitions, st.lease_s)
        await nc.close()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                if r.status != 200:
                    return False
        except Exception:
            return False
        chat = any(n.split("-")[0] == "chat" for n in self.services)
        return asyncio.run(self._chat_ready()) if chat else True

    async def _chat_ready(self) -> bool:
        import nats

        assert self.nats is not None
        nc = await nats.connect(self.nats.url)
        try:
            await nc.request("ag.rpc.chat.history", b'{"contextId":"__probe__"}', timeout=1)
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    @property
    def pids(self) -> dict[str, int]:
        """Every server-side process by name (``nats`` and the services)."""
        found = {name: p.pid for name, p in zip(self.services, self.procs, strict=True)}
        if self.nats is not None:
            found["nats"] = self.nats.process.pid
        return found

    def token(self, sub: str, context: str, roles: tuple[str, ...] = ("learner",)) -> str:
        from shared.auth import mint_token
        from shared.config import load_settings

        if self._settings is None:  # benchmarks mint thousands: read the settings once
            self._settings = load_settings({"AG_JWT_SECRET": self.secret})
        return mint_token(self._settings, sub=sub, contexts=[context], roles=roles, now=time.time())

    def ws_url(self, path: str, token: str, context: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}?contextId={context}&token={token}"

    def chat_url(self, user: str, context: str) -> str:
        """A chat socket's URL for ``user`` in ``context``, token included."""
        return self.ws_url("/api/chat/ws", self.token(user, context), context)
