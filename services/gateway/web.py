"""The browser side the gateway serves: the JavaScript client module at ``/client/`` and,
when ``AG_DEMO`` is on, the demo page at ``/demo/``.

Files are read once at start (they are small and never change under a running process) and
served from memory with an ETag, so a reload costs a 304. Only files that exist at start,
with a known suffix, are served: a request path is a dictionary key, never a filesystem
path, so nothing outside the two directories can be reached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Redirect

from shared.config import Settings

__all__ = ["web_handlers", "web_root"]

_TYPES = {
    ".js": "text/javascript",
    ".ts": "text/plain",  # the .d.ts typings, for people and editors
    ".html": "text/html",
    ".css": "text/css",
    ".svg": "image/svg+xml",  # (Litestar adds "; charset=utf-8" to the text types)
}
# The demo page's policy: its own scripts and sockets only; the token lives in the URL
# fragment (never sent to a server) and no referrer leaks the page address.
_DEMO_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def web_root(settings: Settings) -> Path:
    """``AG_WEB_ROOT``, or the checkout this module runs from."""
    return settings.web_root or Path(__file__).resolve().parents[2]


def _load(directory: Path) -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    if not directory.is_dir():
        return assets
    for path in sorted(directory.iterdir()):
        media_type = _TYPES.get("".join(path.suffixes[-1:]))
        if media_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        assets[path.name] = Asset(
            body, media_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        )
    return assets


def _serve(
    assets: dict[str, Asset],
    name: str,
    request: Request[Any, Any, Any],
    cache: str,
    extra: dict[str, str] | None = None,
) -> Response[bytes]:
    asset = assets.get(name)
    if asset is None:
        raise NotFoundException()
    headers = {
        "ETag": asset.etag,
        "Cache-Control": cache,
        "X-Content-Type-Options": "nosniff",
        **(extra or {}),
    }
    if request.headers.get("if-none-match") == asset.etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def web_handlers(settings: Settings) -> list[HTTPRouteHandler]:
    """Route handlers for ``/client/…`` and, with ``AG_DEMO``, ``/demo/…``."""
    root = web_root(settings)
    client = _load(root / "clients" / "js" / "src")
    # Revalidated after five minutes: an upgraded gateway's module reaches pages soon.
    client_cache = "public, max-age=300, must-revalidate"

    @get("/client/{name:str}", include_in_schema=False)
    async def client_file(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        return _serve(client, name, request, client_cache)

    handlers: list[HTTPRouteHandler] = [client_file]
    if not settings.demo:
        return handlers
    demo = _load(root / "clients" / "demo")

    @get("/demo", include_in_schema=False)
    async def demo_page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return _serve(demo, "index.html", request, "no-cache", _DEMO_HEADERS)

    @get("/demo/{name:str}", include_in_schema=False)
    async def demo_file(name: FromPath[str], request: Request[Any, Any, Any]) -> Response[bytes]:
        return _serve(demo, name, request, "no-cache", _DEMO_HEADERS)

    @get("/", include_in_schema=False)
    async def home() -> Redirect:
        return Redirect("/demo/")

    return [*handlers, demo_page, demo_file, home]
