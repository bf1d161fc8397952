from __future__ import annotations

import io
import json
import logging

import pytest

from shared.logs import redact, setup_logging

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5 - "WebSocket /api/chat/ws?contextId=c&token={JWT}" [accepted]',
        f'"WebSocket /api/chat/ws?token={JWT}&contextId=c" 403',
        f"refused: Bearer {JWT}",
        f'{{"url": "/x?token={JWT}"}}',
        "GET /api/chat/ws?token=not-a-jwt-but-secret HTTP/1.1",
    ],
)
def test_tokens_are_redacted_from_log_lines(line: str) -> None:
    out = redact(line)
    assert JWT not in out and "not-a-jwt-but-secret" not in out
    assert "redacted" in out


def test_other_text_is_left_alone() -> None:
    line = '127.0.0.1:5 - "WebSocket /api/chat/ws?contextId=c&lastSeq=4" [accepted]'
    assert redact(line) == line


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_every_logger_goes_through_the_redaction(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr("sys.stdout", buf)
    setup_logging("test", fmt, "info")
    try:
        logging.getLogger("uvicorn.error").info('"WebSocket %s" [accepted]', f"/ws?token={JWT}")
        try:
            raise ValueError(f"bad token {JWT}")
        except ValueError:
            logging.getLogger("x").exception("failed", extra={"url": f"/ws?token={JWT}"})
    finally:
        logging.getLogger().handlers.clear()
    text = buf.getvalue()
    assert JWT not in text and text.count("redacted") >= 3
    if fmt == "json":
        assert all(json.loads(line) for line in text.splitlines())
