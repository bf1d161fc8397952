"""Runs each service as its own process, restarts the ones that crash, stops all in order.

The embedded nats-server is supervised like the services: if it dies it is started again on the
same store and the same port, so the services (which reconnect forever) find it where it was and
heal what a restart loses (the in-memory command stream, consumers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.natsd import NatsServer, start_nats
from ops.proc import spawn

__all__ = ["SERVICES", "WORKERS", "NatsChild", "Supervisor", "service_of"]

# Every service `up` starts: name -> python module. compose.yaml must have each (a test checks).
SERVICES: dict[str, str] = {
    "chat": "services.chat",
    "gateway": "services.gateway",
    "analytics": "services.analytics",
    "collaboration": "services.collaboration",
}
# Services that run as partition workers: `up --workers N` starts N of each (chat-1, chat-2, …).
WORKERS = ("chat", "collaboration")
# Stop order: the gateway first (sockets get 1001 while the backends still answer), NATS last.
STOP_ORDER = ["gateway", "chat", "analytics", "collaboration", "nats"]


def service_of(child: str) -> str:
    """The service a child runs: ``chat-2`` runs ``chat``."""
    base = child.rsplit("-", 1)[0]
    return base if base in WORKERS and child != base else child


def child_names(workers: int = 1) -> list[str]:
    names: list[str] = []
    for name in SERVICES:
        if name in WORKERS and workers > 1:
            names += [f"{name}-{i}" for i in range(1, workers + 1)]
        else:
            names.append(name)
    return names


def say(text: str) -> None:
    """A status line on stderr; never fails (stderr may be a pipe whose reader is gone)."""
    try:
        print(f"[up] {text}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


@dataclass
class NatsChild:
    """How to (re)start the embedded nats-server: same store, same ports after the first start."""

    data_dir: Path
    sync_interval: str
    log_file: Path
    keep_fds: tuple[int, ...] = ()
    server: NatsServer | None = None

    def start(self) -> subprocess.Popen[bytes]:
        port = self.server.port if self.server else -1
        http_port = self.server.monitor_port if self.server else -1
        self.server = start_nats(
            self.data_dir,
            self.sync_interval,
            self.log_file,
            port=port,
            http_port=http_port,
            keep_fds=self.keep_fds,
        )
        return self.server.process


@dataclass
class _Child:
    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    next_start: float = 0.0
    backoff: float = field(default=0.5)


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Supervisor:
    def __init__(
        self,
        env: dict[str, str],
        names: list[str] | None = None,
        *,
        nats: NatsChild | None = None,
        keep_fds: tuple[int, ...] = (),
        workers: int = 1,
    ) -> None:
        self.env = env
        self.keep_fds = keep_fds
        self.children: dict[str, _Child] = {}
        if nats is not None:
            self.children["nats"] = _Child("nats", nats.start)
        for n in names or child_names(workers):
            self.children[n] = _Child(n, self._service_starter(n))
        self.stopping = False
        # Each backend serves Prometheus metrics on a port of its own (the gateway at /metrics).
        host = env.get("AG_GATEWAY_HOST", "127.0.0.1")
        # A port free now may be the one the gateway binds a moment later: never hand that one
        # (or one twice) to a metrics server.
        taken = {int(env.get("AG_GATEWAY_PORT", "0") or 0)}
        self.metrics_ports: dict[str, int] = {}
        for n in self.children:
            if n in ("nats", "gateway"):
                continue
            port = _free_port(host)
            while port in taken:
                port = _free_port(host)
            taken.add(port)
            self.metrics_ports[n] = port

    def _service_starter(self, name: str) -> Callable[[], subprocess.Popen[bytes]]:
        def start() -> subprocess.Popen[bytes]:
            env = dict(self.env)
            if name in self.metrics_ports:
                env["AG_METRICS_PORT"] = str(self.metrics_ports[name])
            env["AG_PARENT_PID"] = str(os.getpid())  # services also watch us (non-Linux)
            # A fixed id per slot: a restarted worker takes its own partition leases back at once.
            env["AG_WORKER_ID"] = name
            module = SERVICES[service_of(name)]
            return spawn([sys.executable, "-m", module], env=env, keep_fds=self.keep_fds)

        return start

    def _spawn(self, child: _Child) -> None:
        try:
            child.proc = child.start()
        except Exception as exc:  # e.g. nats-server could not bind its port again yet
            say(f"{child.name} did not start: {exc}")
            child.proc = None
            child.next_start = time.monotonic() + child.backoff
            child.backoff = min(child.backoff * 2, 30.0)
            return
        child.started = time.monotonic()
        say(f"started {child.name} (pid {child.proc.pid})")

    def start(self, names: list[str] | None = None) -> None:
        for name in names or list(self.children):
            child = self.children[name]
            if child.proc is None:
                self._spawn(child)
                if child.proc is None:
                    raise RuntimeError(f"{name} did not start")

    def poll(self) -> None:
        """Restart crashed children, with backoff that resets after a minute of good health."""
        now = time.monotonic()
        for child in self.children.values():
            if self.stopping:
                return
            if child.proc is None:
                if child.next_start and now >= child.next_start:  # a failed restart: again
                    child.next_start = 0.0
                    self._spawn(child)
                continue  # or not started yet (the gateway waits for the backends)
            code = child.proc.poll()
            if code is None:
                if now - child.started > 60:
                    child.backoff = 0.5
                continue
            if child.next_start == 0.0:
                say(f"{child.name} exited with {code}; restarting in {child.backoff:.1f}s")
                child.next_start = now + child.backoff
                child.backoff = min(child.backoff * 2, 30.0)
            elif now >= child.next_start:
                child.next_start = 0.0
                child.restarts += 1
                self._spawn(child)

    def alive(self) -> dict[str, bool]:
        return {n: c.proc is not None and c.proc.poll() is None for n, c in self.children.items()}

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        order = sorted(self.children, key=lambda n: STOP_ORDER.index(service_of(n)))
        for name in order:
            proc = self.children[name].proc
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
