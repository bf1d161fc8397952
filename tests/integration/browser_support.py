"""Headless Chromium (Debian's package) driven by Playwright for Python, for the end-to-end
tests of the JavaScript client and the demo page against the real stack.

Without a browser the tests skip, so `make test` runs on a machine with only Python; CI sets
``AG_REQUIRE_BROWSER=1`` (``.ci/run`` installs ``chromium``), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import T
from tests.helpers import Stack

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    missing = []
    if CHROMIUM is None:
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        why = "browser tests need " + " and ".join(missing)
        if os.environ.get("AG_REQUIRE_BROWSER") == "1":
            pytest.fail(why + " (AG_REQUIRE_BROWSER=1)")
        pytest.skip(why)
    assert CHROMIUM is not None
    return CHROMIUM


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = await pw.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def client_page(browser: Any, stack: Stack, gateway: int = 0) -> Any:
    """A fresh browser context on ``gateway``'s origin with the client module imported as
    ``window.AG`` (the same way a page on that origin would ``import`` it)."""
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(T(20) * 1000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(stack.http("/healthz", gateway))
    await page.evaluate("async () => { window.AG = await import('/client/atomic-guide.js'); }")
    return page
