"""Process entry points for services: settings, logging, NATS, signals, orderly shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from prometheus_client import start_http_server

from shared import gc_tuning
from shared.bus.nats import connect
from shared.bus.port import Bus
from shared.config import Settings, load_settings
from shared.logs import get_logger, setup_logging

__all__ = ["Service", "run_service", "watch_parent"]

log = get_logger(__name__)
STOP_TIMEOUT_S = 15.0


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def watch_parent() -> None:
    """Under `atomic-guide up` (``AG_PARENT_PID``): stop cleanly, as on SIGTERM, once the
    supervisor is gone. On Linux the kernel's parent-death signal does this already; this
    thread covers the other platforms."""
    expected = os.environ.get("AG_PARENT_PID")
    if not expected or not expected.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(1.0)  # polling: there is no portable event for "my parent died"
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_service(name: str, factory: Callable[[Settings, Bus], Service]) -> None:
    settings = load_settings()
    setup_logging(name, settings.log_format, settings.log_level)
    watch_parent()
    gc_tuning.tune()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.gateway_host)
    asyncio.run(_main(name, settings, factory))


async def _main(name: str, settings: Settings, factory: Callable[[Settings, Bus], Service]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bus = await connect(settings, name)
    service = factory(settings, bus)
    await _guarded(service.start, name, "start")
    gc_tuning.settle()
    log.info("service started")
    await stop.wait()
    log.info("service stopping")
    try:  # a stop that hangs (NATS gone mid-way) must not keep the process alive
        await asyncio.wait_for(_guarded(service.stop, name, "stop"), STOP_TIMEOUT_S)
    except TimeoutError:
        log.error("service did not stop in time; exiting anyway")
    await bus.close()
    log.info("service stopped")


async def _guarded(step: Callable[[], Awaitable[None]], name: str, what: str) -> None:
    try:
        await step()
    except Exception:
        log.exception(f"{name} failed to {what}")
        raise
