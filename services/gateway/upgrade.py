"""uvicorn's httptools HTTP protocol, letting go of itself once a socket is upgraded.

The HTTP protocol object and its parser refer to each other (the parser calls back into it),
so after the upgrade hands the transport to the WebSocket protocol they are a reference cycle:
only a garbage collection frees them (~3 KB a socket, with their flow control and headers).
Breaking the cycle lets reference counting free them when the upgrade returns.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["UpgradingHttpProtocol"]


class UpgradingHttpProtocol(HttpToolsProtocol):
    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # This object gets no more calls: the transport now feeds the WebSocket protocol.
        self.parser = None  # type: ignore[assignment]
