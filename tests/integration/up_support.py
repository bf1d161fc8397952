"""`atomic-guide up` as a real process tree for tests: start it, find its children, kill them.

The supervisor prints ``[up] started NAME (pid N)`` for every child it (re)starts; that line is
how tests find whom to kill and see that a restart happened. Every pid ever seen is killed at
the end, whatever the test did.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ops.datadir import pid_running
from tests.conftest import T
from tests.helpers import ROOT, TEST_ENV, free_port, http_status, wait_until

__all__ = ["UpStack"]

_STARTED = re.compile(r"\[up\] started ([\w-]+) \(pid (\d+)\)")


class UpStack:
    def __init__(
        self,
        tmp: Path,
        env: dict[str, str] | None = None,
        pipe: bool = False,
        args: tuple[str, ...] = (),
    ) -> None:
        self.tmp = tmp
        self.args = args  # more `up` options
        self.data_dir = tmp / "data"
        self.log = tmp / "up.log"
        self.port = free_port()
        self.pipe = pipe  # run as `up ... 2>&1 | tee LOG`, as an operator might
        base = {k: v for k, v in os.environ.items() if k != "AG_NATS_URL"}
        self.env = {**base, **TEST_ENV, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ops.cli",
            "up",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]

    def start(self, wait: bool = True) -> UpStack:
        self.tmp.mkdir(parents=True, exist_ok=True)
        if self.pipe:
            line = " ".join(f"'{a}'" for a in self.command())
            args = ["bash", "-c", f"{line} 2>&1 | tee -a '{self.log}' > /dev/null"]
            self.proc = subprocess.Popen(args, env=self.env, cwd=ROOT, start_new_session=True)
        else:
            out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_until(
            lambda: http_status(self.http("/readyz")) == 200,
            timeout,
            f"atomic-guide up ready\n{self.tail()}",
        )
        self.pids()

    # --- where things are -----------------------------------------------------------------
    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def url(self, path: str = "/api/chat/ws", **query: Any) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?{qs}" if qs else "")

    def nats_url(self) -> str:
        return (self.data_dir / "nats.url").read_text().strip()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def pids(self) -> dict[str, int]:
        """The newest pid of each child, from the supervisor's ``started`` lines."""
        found: dict[str, int] = {}
        for name, pid in _STARTED.findall(self.tail(10**7)):
            found[name] = int(pid)
            self.seen.add(int(pid))
        return found

    def up_pid(self) -> int:
        """The supervisor's own pid (it writes it into the data dir lock)."""
        return int((self.data_dir / "up.lock").read_text().split()[0])

    # --- faults ---------------------------------------------------------------------------
    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        pid = self.pids()[name]
        os.kill(pid, sig)
        return pid

    def wait_restarted(self, name: str, old: int, timeout: float = 30) -> int:
        wait_until(
            lambda: self.pids().get(name, old) != old, timeout, f"{name} restarted\n{self.tail()}"
        )
        return self.pids()[name]

    def alive(self) -> set[int]:
        """Every child pid ever started that is still running."""
        self.pids()
        return {pid for pid in self.seen if pid_running(pid)}

    # --- the end --------------------------------------------------------------------------
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the supervisor (not its children) and wait for it to exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.up_pid(), sig)
            except (OSError, ValueError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(T(timeout))
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll()

    def cleanup(self) -> None:
        """Whatever happened: nothing this test started keeps running."""
        self.pids()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        for pid in self.seen:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + T(10)
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for killed processes to be reaped
