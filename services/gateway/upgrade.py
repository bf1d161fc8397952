"""uvicorn's httptools HTTP protocol, handing a WebSocket upgrade over as parsed, then letting go.

uvicorn writes the request httptools has parsed back out as bytes for the WebSocket protocol,
which parses them again (``websockets``' generator-based parser, line by line), and the new
protocol asks the socket for both addresses again. Here ``OutletProtocol`` gets the request as
``websockets``' own ``Request``, built from what httptools parsed, and the addresses the HTTP
protocol already has. Anything the direct way does not check exactly as ``websockets`` would
(another method or version, oversize lines, too many headers, a body, bytes outside the
grammar) takes uvicorn's way, so it is refused as before.

The HTTP protocol object and its parser refer to each other (the parser calls back into it),
so after the upgrade they are a reference cycle: only a garbage collection frees them (~3 KB a
socket). Dropping the parser lets reference counting free them when the upgrade returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import websockets.http11
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from websockets.datastructures import Headers
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request

from services.gateway.outlet import OutletProtocol

__all__ = ["UpgradingHttpProtocol", "handshake_request"]

# The grammar websockets' own parser holds header lines to (RFC 9110 tokens and field values);
# a websockets without them sends every upgrade uvicorn's way.
_token_re: re.Pattern[bytes] | None = getattr(websockets.http11, "_token_re", None)
_value_re: re.Pattern[bytes] | None = getattr(websockets.http11, "_value_re", None)


def handshake_request(
    method: str, http_version: str, url: bytes, headers: Iterable[tuple[bytes, bytes]]
) -> Request | None:
    """``websockets``' ``Request`` for a handshake httptools parsed, or None when only
    ``websockets``' own parser can judge it (it then answers 400, 414 or 431 as it always did)."""
    if _token_re is None or _value_re is None:
        return None
    if method != "GET" or http_version != "1.1":
        return None
    if len(url) + 15 > MAX_LINE_LENGTH or not url.isascii():  # "GET " url " HTTP/1.1\r\n"
        return None
    out = Headers()
    for count, (name, value) in enumerate(headers, 1):
        # name ": " value "\r\n", as websockets counts a line
        if count > MAX_NUM_HEADERS or len(name) + len(value) + 4 > MAX_LINE_LENGTH:
            return None
        if not _token_re.fullmatch(name) or not _value_re.fullmatch(value):
            return None
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return None
        out[name.decode("ascii")] = value.decode("latin-1")
    return Request(url.decode("ascii"), out, method, "HTTP/1.1")


class UpgradingHttpProtocol(HttpToolsProtocol):
    def handle_websocket_upgrade(self) -> None:
        ws_class = self.ws_protocol_class
        outlet_class: type[OutletProtocol] | None = None
        request = None
        if isinstance(ws_class, type) and issubclass(ws_class, OutletProtocol):
            outlet_class = ws_class
            request = handshake_request(
                self.scope["method"], self.scope["http_version"], self.url, self.scope["headers"]
            )
        if outlet_class is None or request is None:
            super().handle_websocket_upgrade()
        else:  # uvicorn's steps, minus writing the request out to be parsed again
            self.connections.discard(self)
            protocol = outlet_class(
                config=self.config, server_state=self.server_state, app_state=self.app_state
            )
            protocol.adopt(self.transport, self.server, self.client, self.scheme)
            self.transport.set_protocol(protocol)
            protocol.upgrade(request)
        # This object gets no more calls: the transport now feeds the WebSocket protocol.
        self.parser = None  # type: ignore[assignment]
