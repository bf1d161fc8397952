"""One JSON object per line on stdout (or a console format for humans).

Tokens never reach a log: every formatted line (message, extra fields, tracebacks, the access
lines uvicorn writes with the request's query string) has ``token=...`` query values and
anything shaped like a JWT replaced, whichever logger produced it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from shared.timefmt import format_ts

__all__ = ["setup_logging", "get_logger", "redact"]

_SECRETS = re.compile(
    r"(?P<param>(?:[?&]|\b)(?:access_)?token=)[^&\s\"'\\]+"  # ?token=... in URLs
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)"  # a bare JWT
)


def _hide(match: re.Match[str]) -> str:
    param = match.group("param")
    return f"{param}[redacted]" if param is not None else "[redacted-jwt]"


def redact(text: str) -> str:
    """``text`` with token query values and JWTs replaced."""
    return _SECRETS.sub(_hide, text) if ("token=" in text or "eyJ" in text) else text


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC, datetime

        out: dict[str, Any] = {
            "timestamp": format_ts(datetime.fromtimestamp(record.created, UTC)),
            "level": record.levelname.lower(),
            "service": self.service,
            "event": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(out, default=str))


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED)
        line = f"{record.levelname.lower():7} {self.service:13} {record.getMessage()} {extra}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line.rstrip())


def setup_logging(service: str, fmt: str = "json", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonFormatter(service) if fmt == "json" else _ConsoleFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Quiet chatty libraries; our own logs carry what matters.
    for name in ("uvicorn.access", "nats"):
        logging.getLogger(name).setLevel("WARNING")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
