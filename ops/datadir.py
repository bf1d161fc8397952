"""One stack per data dir: `up` (and any tool that starts nats-server on the store) holds a lock.

Two nats-servers on one JetStream store corrupt it, and DuckDB lets only one writer in, so a
second `up` on a data dir in use stops at once and names the pid that holds it. The lock is an
``flock`` on ``<data-dir>/up.lock``: the kernel drops it when its holders die, so a lock left by a
crashed `up` is simply taken over. `up`'s children inherit it, so the data dir stays locked until
the last of them has exited (after a SIGKILL of `up` they take a moment to stop).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

__all__ = ["DataDirInUse", "DataDirLock", "pid_running"]

LOCK_NAME = "up.lock"


class DataDirInUse(RuntimeError):
    """Another live process holds the data dir."""


class DataDirLock:
    def __init__(self, data_dir: Path, what: str = "atomic-guide up") -> None:
        self.path = data_dir / LOCK_NAME
        self.what = what
        self.fd = -1

    def acquire(self, wait_for_dead_s: float = 15.0) -> DataDirLock:
        """Take the lock or raise ``DataDirInUse``. If the recorded holder is dead but its
        children still hold the lock, wait up to ``wait_for_dead_s`` for them to exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_for_dead_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder, what = _read(fd)
                if holder is not None and pid_running(holder):
                    os.close(fd)
                    raise DataDirInUse(
                        f"data dir {self.path.parent} is in use by {what} (pid {holder})"
                    ) from None
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise DataDirInUse(
                        f"data dir {self.path.parent} is still locked by processes of a stopped "
                        f"{what} (pid {holder}); see `fuser {self.path}`"
                    ) from None
                time.sleep(0.2)  # waiting for a dead holder's children to exit
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.what}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _read(fd: int) -> tuple[int | None, str]:
    try:
        pid, _, what = os.pread(fd, 200, 0).decode().strip().partition(" ")
        return int(pid), what or "atomic-guide up"
    except (ValueError, OSError):
        return None, "atomic-guide up"


def pid_running(pid: int) -> bool:
    """``pid`` is a live process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: kill(0) said it exists
