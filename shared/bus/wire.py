"""The NATS client protocol, sans I/O: what the log tail's data connection needs of it.

Bytes from the server go in through ``receive_data``; ``frames_received`` returns what they
held, complete frames only, in order. ``connect``, ``sub`` and ``pub`` build what the client
sends. The grammar is the NATS client protocol's:

    INFO {json}␍␊   MSG <subject> <sid> [reply] <#bytes>␍␊<payload>␍␊
    HMSG <subject> <sid> [reply] <#header bytes> <#total bytes>␍␊<headers><payload>␍␊
    PING␍␊  PONG␍␊  +OK␍␊  -ERR <text>␍␊

Why it exists beside nats-py: nats-py builds a message object, parses its headers and resolves
a future or awaits a callback per message; parsing a whole read at once costs about 1 µs per
message (``atomic-guide bench analytics`` compares the two ways of reading the log). Everything
else (connecting with reconnects, JetStream requests, consumers) stays with nats-py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = [
    "Err",
    "Info",
    "Msg",
    "Parser",
    "Ping",
    "Pong",
    "ProtocolError",
    "connect",
    "pub",
    "status_of",
    "sub",
]

_CRLF = b"\r\n"
MAX_CONTROL = 4096  # a control line longer than this is not NATS


class ProtocolError(Exception):
    """The server sent something that is not the NATS protocol."""


@dataclass(slots=True)  # not frozen: one is built per message, and frozen costs 4x
class Msg:
    """A delivered message: ``headers`` is the raw header block (``NATS/1.0…``) or empty."""

    subject: bytes
    sid: int
    reply: bytes
    headers: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Info:
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Err:
    text: str


class Ping:
    __slots__ = ()


class Pong:
    __slots__ = ()


Frame = Msg | Info | Err | Ping | Pong
_PING, _PONG = Ping(), Pong()


class Parser:
    def __init__(self, max_payload: int = 64 * 1024 * 1024) -> None:
        self.max_payload = max_payload
        self._rest = b""  # the start of a frame that has not all arrived
        self._frames: list[Frame] = []

    def receive_data(self, data: bytes) -> None:
        """Parse what ``data`` completes; a partial frame waits for the next call."""
        # Work on immutable bytes: each slice is then one copy, and only the partial frame at
        # the end is carried over.
        buf = self._rest + data if self._rest else bytes(data)
        pos, size, out = 0, len(buf), self._frames
        find = buf.find
        while pos < size:
            nl = find(_CRLF, pos)
            if nl < 0:
                if size - pos > MAX_CONTROL:
                    raise ProtocolError("control line too long")
                break
            first = buf[pos]
            if first == 0x4D or first == 0x48:  # MSG / HMSG
                parts = buf[pos:nl].split()
                n = len(parts)
                try:
                    if first == 0x48:  # HMSG subject sid [reply] hlen total
                        if n != 5 and n != 6:
                            raise ValueError
                        hlen, total = int(parts[-2]), int(parts[-1])
                        reply = parts[3] if n == 6 else b""
                    else:  # MSG subject sid [reply] total
                        if n != 4 and n != 5:
                            raise ValueError
                        hlen, total = 0, int(parts[-1])
                        reply = parts[3] if n == 5 else b""
                    sid = int(parts[2])
                except ValueError:
                    raise ProtocolError(f"malformed message line {buf[pos:nl][:80]!r}") from None
                if not 0 <= hlen <= total <= self.max_payload:
                    raise ProtocolError(f"message sizes out of range: {hlen}, {total}")
                start = nl + 2
                end = start + total
                if end + 2 > size:
                    break  # the payload has not all arrived
                if not buf.startswith(_CRLF, end):
                    raise ProtocolError("payload not followed by CRLF")
                out.append(
                    Msg(
                        parts[1],
                        sid,
                        reply,
                        buf[start : start + hlen] if hlen else b"",
                        buf[start + hlen : end],
                    )
                )
                pos = end + 2
                continue
            line = buf[pos:nl]
            pos = nl + 2
            op = line[:4].upper()
            if op == b"PING":
                out.append(_PING)
            elif op == b"PONG":
                out.append(_PONG)
            elif op == b"INFO":
                out.append(Info(json.loads(line[5:])))
            elif op == b"-ERR":
                out.append(Err(line[5:].strip().strip(b"'").decode(errors="replace")))
            elif op != b"+OK":
                raise ProtocolError(f"unknown operation {line[:16]!r}")
        self._rest = buf[pos:] if pos < size else b""

    def frames_received(self) -> list[Frame]:
        out, self._frames = self._frames, []
        return out


def status_of(headers: bytes) -> str:
    """The status code of a header block (``NATS/1.0 408 Request Timeout`` -> ``408``)."""
    line = headers.split(_CRLF, 1)[0]
    parts = line.split(None, 2)
    return parts[1].decode() if len(parts) > 1 else ""


# --- what the client sends ---------------------------------------------------------------
def connect(url: str, name: str, version: str) -> bytes:
    """CONNECT (with the URL's user:password or token) followed by PING: the PONG that answers
    it says the server accepted the connection."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    opts: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "headers": True,
        "no_responders": True,
        "protocol": 1,
        "lang": "python-wire",
        "version": version,
        "name": name,
    }
    if parts.username and parts.password is not None:
        opts["user"], opts["pass"] = unquote(parts.username), unquote(parts.password)
    elif parts.username:
        opts["auth_token"] = unquote(parts.username)
    return b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n"


def sub(subject: str, sid: int) -> bytes:
    return f"SUB {subject} {sid}\r\n".encode()


def pub(subject: str, reply: str, payload: bytes) -> bytes:
    return f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + _CRLF
