"""ASGI wrapper that refuses, before any work is done: a WebSocket upgrade or a ``POST`` from a
browser origin that is not allowed (HTTP 403, ``services/gateway/origins.py``), and upgrades
over the per-IP connection rate (HTTP 429).

It sits outside the Litestar app because the refusal must happen before the upgrade, through
the ASGI ``websocket.http.response`` extension (uvicorn's websockets-sansio implements it).
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from services.gateway import metrics
from services.gateway.origins import OriginPolicy
from services.gateway.outlet import EXTENSION
from shared.config import Settings
from shared.logs import get_logger
from shared.ratelimit import KeyedLimiter

__all__ = ["ConnectionGate", "client_ip", "parse_proxies"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = get_logger(__name__)


def parse_proxies(entries: tuple[str, ...] | list[str]) -> tuple[IPNetwork, ...]:
    """Trusted proxies as addresses or CIDR ranges (container networks assign addresses late)."""
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def _trusted(addr: str, proxies: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_ip(scope: dict[str, Any], proxies: tuple[IPNetwork, ...]) -> str:
    """The socket peer, or the right-most untrusted X-Forwarded-For hop behind trusted proxies."""
    peer = str((scope.get("client") or ("unknown", 0))[0])
    if not proxies or not _trusted(peer, proxies):
        return peer
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-for":
            hops = [h.strip() for h in value.decode("latin-1").split(",") if h.strip()]
            for hop in reversed(hops):
                if not _trusted(hop, proxies):
                    try:
                        return str(ipaddress.ip_address(hop))
                    except ValueError:
                        return peer
    return peer


_FORBIDDEN_ORIGIN = b'{"code":"forbidden","error":"origin not allowed"}'
_RATE_LIMITED = b'{"code":"rate_limited","error":"too many connections from this address"}'


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _http_refuse(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ConnectionGate:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.trusted = parse_proxies(settings.trusted_proxies)
        self.limiter = KeyedLimiter(settings.rate_connections_per_minute)
        self.origins = OriginPolicy(settings.allowed_origins)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope.get("method") == "POST"):
            origin, host = _header(scope, b"origin"), _header(scope, b"host")
            if not self.origins.allows(origin, host):
                metrics.REJECTED.labels("origin").inc()
                log.warning("origin refused", extra={"origin": origin, "path": scope.get("path")})
                if kind == "websocket":
                    await self._refuse(scope, receive, send, 403, _FORBIDDEN_ORIGIN, [])
                else:
                    await _http_refuse(send, 403, _FORBIDDEN_ORIGIN)
                return
        if kind == "websocket":
            ip = client_ip(scope, self.trusted)
            scope.setdefault("state", {})["client_ip"] = ip
            if not self.limiter.hit(ip, time.monotonic()):
                metrics.REJECTED.labels("rate_limited").inc()
                log.warning("connection rate limit", extra={"ip": ip})
                retry = [(b"retry-after", b"60")]
                await self._refuse(scope, receive, send, 429, _RATE_LIMITED, retry)
                return
        try:
            await self.app(scope, receive, send)
        finally:
            # The socket's ASGI call is over: the scope would keep the server's protocol (its
            # parser, transport and buffers) through the outlet extension, and the protocol
            # keeps the scope: a cycle only a full collection frees.
            scope.get("extensions", {}).pop(EXTENSION, None)

    @staticmethod
    async def _refuse(
        scope: dict[str, Any],
        receive: Any,
        send: Any,
        status: int,
        body: bytes,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            headers = [(b"content-type", b"application/json"), *extra]
            await send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # servers without the extension answer 403; still refused before the upgrade
            await send({"type": "websocket.close", "code": 1008})
