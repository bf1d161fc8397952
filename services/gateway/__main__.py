"""Run the gateway under uvicorn; SIGTERM drains sockets with 1001 before the server stops."""

from __future__ import annotations

import asyncio
import signal
import socket
from types import FrameType

import uvicorn

from services.gateway.app import Gateway, create_app
from services.gateway.outlet import OutletProtocol
from services.gateway.upgrade import UpgradingHttpProtocol
from shared import gc_tuning
from shared.config import Settings, load_settings
from shared.logs import setup_logging
from shared.runner import watch_parent


class _Server(uvicorn.Server):
    gateway: Gateway
    _drain: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app's lifespan has run: the gateway is started
        gc_tuning.settle()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            return super().handle_exit(sig, frame)
        # Close sockets with 1001 first; uvicorn's own shutdown would say 1012.
        loop = asyncio.get_event_loop()
        self._drain = loop.create_task(self.gateway.drain())  # owned: kept until it is done
        self._drain.add_done_callback(lambda _: super(_Server, self).handle_exit(sig, frame))


def build_server(settings: Settings) -> _Server:
    app, gateway = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        http=UpgradingHttpProtocol,  # httptools, without a reference cycle per socket
        ws=OutletProtocol,  # uvicorn's websockets-sansio, plus pre-built frames (outlet.py)
        # Bigger than the protocol limit so oversize frames get `too_large`, not a hard 1009.
        ws_max_size=max(16 * settings.max_frame_bytes, 1 << 20),
        ws_per_message_deflate=settings.ws_compression,
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        # The gate alone decides the client IP (AG_TRUSTED_PROXIES); uvicorn's rewrite would
        # believe any X-Forwarded-For from 127.0.0.1, and costs a middleware frame per socket.
        proxy_headers=False,
        server_header=False,  # no software banner for scanners
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    server.gateway = gateway
    return server


def main() -> None:
    settings = load_settings()
    setup_logging("gateway", settings.log_format, settings.log_level)
    watch_parent()
    gc_tuning.tune()
    server = build_server(settings)
    server.run()


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
