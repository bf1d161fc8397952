"""Endpoint URL building."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["endpoint_url", "with_query"]

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


def endpoint_url(url: str, path: str | None) -> str:
    """Normalise ``url`` to ``ws(s)://``; a URL without a path gets ``path`` appended.

    ``http(s)://`` is accepted so that one base URL serves REST calls and sockets.
    """
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    new_path = path if path and parts.path in ("", "/") else parts.path
    return urlunsplit((scheme, parts.netloc, new_path, parts.query, ""))


def with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to (or replacing the same keys in) its query."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))
