"""Browser origins: no Origin passes, the gateway's own passes, then the configured list."""

from __future__ import annotations

import pytest

from services.gateway.origins import OriginPolicy

HOST = "chat.school.example"


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (None, True),  # not a browser
        (f"https://{HOST}", True),  # same origin: a page the gateway serves
        (f"https://{HOST.upper()}/", True),
        ("http://localhost:5173", True),
        ("https://127.0.0.1:8443", True),
        ("http://[::1]:3000", True),
        ("https://evil.example", False),
        (f"https://{HOST}.evil.example", False),
        ("http://localhost.evil.example", False),
        ("null", False),  # sandboxed frames, file: pages
        ("chrome-extension://abc", False),
        ("not a url", False),
    ],
)
def test_the_default_allows_own_and_loopback_origins_only(origin: str | None, ok: bool) -> None:
    assert OriginPolicy(()).allows(origin, HOST) is ok


def test_a_configured_list_replaces_loopback_and_star_allows_all() -> None:
    listed = OriginPolicy(("https://lms.example", "null"))
    assert listed.allows("https://lms.example/", HOST)
    assert listed.allows("null", HOST)
    assert listed.allows(f"https://{HOST}", HOST)  # its own origin always
    assert not listed.allows("http://localhost:5173", HOST)
    assert not listed.allows("https://other.example", HOST)
    assert OriginPolicy(("*",)).allows("https://anything.example", HOST)
