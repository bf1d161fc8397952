"""Runs each service as its own process, restarts the ones that crash, stops all in order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

__all__ = ["SERVICES", "Supervisor"]

# Every service `up` starts: name -> python module. compose.yaml must have each (a test checks).
SERVICES: dict[str, str] = {
    "chat": "services.chat",
    "gateway": "services.gateway",
    "analytics": "services.analytics",
    "collaboration": "services.collaboration",
}
# Stop order: the gateway first (sockets get 1001 while the backends still answer).
STOP_ORDER = ["gateway", "chat", "analytics", "collaboration"]


@dataclass
class _Child:
    name: str
    module: str
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
    def __init__(self, env: dict[str, str], names: list[str] | None = None) -> None:
        self.env = env
        self.children = {n: _Child(n, SERVICES[n]) for n in (names or list(SERVICES))}
        self.stopping = False
        # Each backend serves Prometheus metrics on a port of its own (the gateway at /metrics).
        host = env.get("AG_GATEWAY_HOST", "127.0.0.1")
        self.metrics_ports = {n: _free_port(host) for n in self.children if n != "gateway"}

    def _spawn(self, child: _Child) -> None:
        env = dict(self.env)
        if child.name in self.metrics_ports:
            env["AG_METRICS_PORT"] = str(self.metrics_ports[child.name])
        child.proc = subprocess.Popen(
            [sys.executable, "-m", child.module],
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )
        child.started = time.monotonic()
        print(f"[up] started {child.name} (pid {child.proc.pid})", file=sys.stderr, flush=True)

    def start(self, names: list[str] | None = None) -> None:
        for name in names or list(self.children):
            child = self.children[name]
            if child.proc is None:
                self._spawn(child)

    def poll(self) -> None:
        """Restart crashed children, with backoff that resets after a minute of good health."""
        now = time.monotonic()
        for child in self.children.values():
            if self.stopping or child.proc is None:
                continue  # stopping, or not started yet (the gateway waits for the backends)
            code = child.proc.poll()
            if code is None:
                if now - child.started > 60:
                    child.backoff = 0.5
                continue
            if child.next_start == 0.0:
                print(
                    f"[up] {child.name} exited with {code}; restarting in {child.backoff:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
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
        order = [n for n in STOP_ORDER if n in self.children] + [
            n for n in self.children if n not in STOP_ORDER
        ]
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
