"""Child processes that never outlive their parent.

Every process `up` starts (nats-server and the services) runs in a session of its own, so a
Ctrl-C at the terminal reaches only the supervisor, which then stops them in order. If the
supervisor dies without doing so (SIGKILL, a crash, a broken pipe to `tee`), the kernel sends
each child SIGTERM (Linux ``PR_SET_PDEATHSIG``) and they stop cleanly on their own; a signal
handler alone could not promise that.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

__all__ = ["spawn"]

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None  # elsewhere the services watch their parent themselves (shared.runner)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    keep_fds: Sequence[int] = (),
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own, bound to this process's life; output appended to
    ``log`` (or inherited). ``keep_fds`` are inherited (the data dir lock)."""
    out: IO[bytes] | None = open(log, "ab") if log else None  # noqa: SIM115 - the child's now
    try:
        return subprocess.Popen(
            list(args),
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
            pass_fds=tuple(keep_fds),
        )
    finally:
        if out is not None:
            out.close()
