"""The demo page (clients/demo/, served at /demo/ with AG_DEMO=true) in real headless Chromium
against the real stack: a learner and an instructor at once — chat with presence and typing,
the instructor's live dashboard, the shared editor converging with remote carets — under the
page's strict Content-Security-Policy; then history paging, and the pages without a usable
token."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import T
from tests.helpers import Client, Stack, token
from tests.integration.analytics_support import start_analytics
from tests.integration.browser_support import browser

__all__ = ["browser"]  # the fixture, imported for the tests of this module

CTX = "ctx-demo"
WAIT_MS = T(20) * 1000  # Playwright takes milliseconds


@pytest.fixture
async def web_stack(make_stack: Callable[..., Any], nc: Any) -> Stack:
    # AG_TYPING_TTL_S: the protocol's default rather than the tests' 1 s, so an indicator the
    # page renews every 2 s stays up as it would in production.
    stack: Stack = await make_stack(
        env={"AG_DEMO": "true", "AG_TYPING_TTL_S": "6"}, gateways=1, services=["collaboration"]
    )
    await start_analytics(stack, nc)
    return stack


@dataclass
class Demo:
    """One demo page and what it reported: page errors, CSP violations, sockets opened."""

    page: Any
    errors: list[str] = field(default_factory=list)
    csp: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)

    def by(self, testid: str) -> Any:
        return self.page.get_by_test_id(testid)

    def clean(self) -> bool:
        return not self.errors and not self.csp


async def open_demo(browser: Any, stack: Stack, fragment: str = "") -> Demo:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    demo = Demo(page)
    page.on("pageerror", lambda exc: demo.errors.append(str(exc)))

    def console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            demo.csp.append(message.text)

    page.on("console", console)
    page.on("websocket", lambda ws: demo.sockets.append(ws.url))
    await page.goto(stack.http("/demo/") + fragment)
    return demo


# True once `userId`'s caret mark in the overlay follows exactly `text` and lies over the
# textarea. (Measured in one turn in the page: the overlay is rebuilt on every event.)
CARET_AFTER = """
([userId, text]) => {
  const mark = document.querySelector(`[data-testid=remote-cursor][data-user-id="${userId}"]`);
  if (!mark) return false;
  const before = document.createRange();
  before.setStart(mark.parentNode, 0);
  before.setEndBefore(mark);
  const at = mark.getBoundingClientRect();
  const box = document.querySelector("[data-testid=editor]").getBoundingClientRect();
  const over = at.left >= box.left && at.left <= box.right && at.top >= box.top
    && at.bottom <= box.bottom;
  return before.toString() === text && over;
}
"""


def link(tok: str) -> str:
    return f"#context={CTX}&token={tok}"


async def number(demo: Demo, testid: str) -> int:
    return int((await demo.by(testid).text_content() or "").replace(",", ""))


async def wait_number_above(demo: Demo, testid: str, floor: int) -> None:
    await demo.page.wait_for_function(
        "([id, n]) => Number(document.querySelector(`[data-testid=${id}]`)"
        ".textContent.replace(/,/g, '')) > n",
        arg=[testid, floor],
        timeout=T(30) * 1000,
    )


async def test_a_learner_and_an_instructor_share_the_demo_page(
    browser: Any, web_stack: Stack, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    learner = await open_demo(browser, web_stack, link(token("lea", CTX, name="Lea Learner")))
    teacher = await open_demo(
        browser,
        web_stack,
        link(token("ines", CTX, roles=("instructor",), name="Ines Instructor")),
    )
    pages = (learner, teacher)

    # Everyone is connected; the token is gone from the address bar (the context stays).
    for demo in pages:
        for endpoint in ("chat", "collaboration"):
            status = demo.by(f"status-{endpoint}")
            await expect(status).to_have_attribute("data-state", "connected", timeout=WAIT_MS)
        assert "token" not in demo.page.url and f"context={CTX}" in demo.page.url
    await expect(teacher.by("status-analytics")).to_have_attribute(
        "data-state", "connected", timeout=WAIT_MS
    )
    await expect(learner.by("me-role")).to_have_text("learner")
    await expect(teacher.by("me-role")).to_have_text("instructor")

    # The learner has no dashboard and never opened the analytics socket.
    await expect(learner.by("dashboard")).to_have_count(0)
    await expect(learner.by("status-analytics")).to_be_hidden()
    assert not [url for url in learner.sockets if "/api/analytics/" in url]
    await expect(teacher.by("dashboard")).to_be_visible()

    # Presence: each sees the other.
    await expect(teacher.by("presence-list").locator('[data-user-id="lea"]')).to_contain_text(
        "Lea Learner", timeout=WAIT_MS
    )
    await expect(learner.by("presence-list").locator('[data-user-id="ines"]')).to_be_visible(
        timeout=WAIT_MS
    )

    # The dashboard has its first values: remember them.
    await expect(teacher.by("activity-chart")).to_be_visible(timeout=WAIT_MS)
    messages_before = await number(teacher, "activity-messages")
    total_before = int(await teacher.by("activity-chart").get_attribute("data-total") or "0")

    # The learner types: the instructor sees "… is typing…"; Enter sends.
    composer = learner.by("composer-input")
    await composer.press_sequentially("Hello from Lea 👋", delay=20)
    typing = teacher.by("typing-indicator")
    await expect(typing).to_have_text("Lea Learner is typing…", timeout=WAIT_MS)
    await expect(learner.by("typing-indicator")).to_have_text("")
    await composer.press("Enter")
    await expect(composer).to_have_value("")

    received = teacher.by("chat-message").filter(has_text="Hello from Lea 👋")
    await expect(received).to_have_count(1, timeout=WAIT_MS)
    await expect(received.get_by_test_id("message-author")).to_have_text("Lea Learner")
    await expect(typing).to_have_text("", timeout=WAIT_MS)  # sending ends the indicator
    sent = learner.by("chat-message").filter(has_text="Hello from Lea 👋")
    await expect(sent).to_have_count(1)
    await expect(sent).not_to_have_class(re.compile(r"\bpending\b"), timeout=WAIT_MS)

    # The instructor's activity numbers and chart move.
    await wait_number_above(teacher, "activity-messages", messages_before)
    await teacher.page.wait_for_function(
        "(n) => Number(document.querySelector('[data-testid=activity-chart]').dataset.total) > n",
        arg=total_before,
        timeout=T(30) * 1000,
    )
    assert await teacher.by("activity-bar").count() > 1

    # The shared editor: a first line, then both type at once, with emoji: the instructor at
    # the start, the learner at the end (the same spot would interleave their characters,
    # as OT may). The learner's caret must ride along as text is inserted before it.
    editors = [demo.by("editor") for demo in pages]
    for editor in editors:
        await expect(editor).to_be_enabled(timeout=WAIT_MS)
    await editors[0].press_sequentially("Notes by Lea 🚀\n", delay=10)
    await expect(editors[1]).to_have_value("Notes by Lea 🚀\n", timeout=WAIT_MS)
    await editors[1].click()
    await teacher.page.keyboard.press("Control+Home")
    await asyncio.gather(
        editors[0].press_sequentially("Lea: café ☕", delay=15),
        editors[1].press_sequentially("Ines ✅ 👩‍🏫 ", delay=15),
    )
    final = "Ines ✅ 👩‍🏫 Notes by Lea 🚀\nLea: café ☕"
    for demo, editor in zip(pages, editors, strict=True):
        await expect(editor).to_have_value(final, timeout=T(30) * 1000)
        await expect(demo.by("doc-saved")).to_have_attribute("data-state", "saved", timeout=WAIT_MS)

    # Each page shows the other's caret where the other left it, over the editor, named.
    for demo, other, name, before in (
        (teacher, "lea", "Lea Learner", final),
        (learner, "ines", "Ines Instructor", "Ines ✅ 👩‍🏫 "),
    ):
        mark = demo.by("remote-cursor").and_(demo.page.locator(f'[data-user-id="{other}"]'))
        await expect(mark).to_have_count(1, timeout=WAIT_MS)
        await expect(mark).to_contain_text(name)
        await demo.page.wait_for_function(CARET_AFTER, arg=[other, before], timeout=WAIT_MS)

    await expect(learner.by("participants")).to_contain_text("Ines Instructor")
    await save_screenshots(tmp_path, learner=learner, instructor=teacher)
    for demo in pages:
        assert demo.clean(), (demo.errors, demo.csp)


async def save_screenshots(tmp_path: Path, **pages: Demo) -> None:
    """Into the test's tmp_path; also into $AG_DEMO_SCREENSHOTS when it is set (to look at)."""
    extra = os.environ.get("AG_DEMO_SCREENSHOTS")
    for name, demo in pages.items():
        await demo.page.mouse.move(0, 0)  # no hover effects in the picture
        await demo.page.evaluate("window.scrollTo(0, 0)")  # the header is sticky
        path = tmp_path / f"{name}.png"
        await demo.page.screenshot(path=str(path), full_page=True)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / f"{name}.png")


async def test_the_chat_pages_back_through_history_when_scrolled_to_the_top(
    browser: Any, web_stack: Stack
) -> None:
    from playwright.async_api import expect

    poster = await Client.connect(web_stack.url(token=token("pat", CTX), contextId=CTX))
    await poster.expect("connected")
    for i in range(60):
        frame = {"type": "message", "id": f"m{i}", "data": {"content": f"old message {i}"}}
        await poster.request(frame, "ack")

    demo = await open_demo(browser, web_stack, link(token("lea", CTX)))
    messages = demo.by("chat-message")
    await expect(messages).to_have_count(50, timeout=WAIT_MS)  # the newest page
    await expect(messages.first).to_contain_text("old message 10")
    await expect(messages.last).to_contain_text("old message 59")
    await expect(demo.by("load-older")).to_be_visible()

    # Scrolled to the top: the older ten come in above, and what was on screen stays put.
    scroller = demo.by("chat-scroll")
    where = (
        "(el) => el.querySelector('[data-seq=\"11\"]').getBoundingClientRect().top"
        " - el.getBoundingClientRect().top"
    )
    # (Scrolling and measuring in one turn: the page loads older messages only after it.)
    before = await scroller.evaluate(f"(el) => {{ el.scrollTop = 0; return ({where})(el); }}")
    await expect(messages).to_have_count(60, timeout=WAIT_MS)
    await expect(messages.first).to_contain_text("old message 0")
    await expect(demo.by("load-older")).to_be_hidden()
    after = await scroller.evaluate(where)
    assert abs(after - before) <= 2, (before, after)
    assert await scroller.evaluate("(el) => el.scrollTop") > 0
    seqs = await messages.evaluate_all("(items) => items.map((li) => Number(li.dataset.seq))")
    assert seqs == list(range(1, 61))
    assert demo.clean(), (demo.errors, demo.csp)


async def test_without_a_usable_token_the_page_explains_what_to_do(
    browser: Any, web_stack: Stack
) -> None:
    from playwright.async_api import expect

    # No token: how to get a link, and no socket at all.
    bare = await open_demo(browser, web_stack)
    await expect(bare.by("no-token")).to_be_visible()
    await expect(bare.by("no-token")).to_contain_text("atomic-guide up")
    await expect(bare.by("app")).to_be_hidden()
    assert bare.sockets == []

    # A token for another context: each endpoint says so (4403) instead of failing silently.
    wrong = await open_demo(browser, web_stack, link(token("lea", "another-course")))
    for endpoint in ("chat", "collaboration"):
        status = wrong.by(f"status-{endpoint}")
        await expect(status).to_have_attribute("data-state", "closed", timeout=WAIT_MS)
        await expect(wrong.by(f"alert-{endpoint}")).to_contain_text("4403")
    await expect(wrong.by("alert-chat")).to_contain_text(f"does not allow context “{CTX}”")
    for demo in (bare, wrong):
        assert demo.clean(), (demo.errors, demo.csp)
