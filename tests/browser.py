"""Pages in headless Chromium: Debian's ``chromium`` (/usr/bin/chromium) driven by Playwright for
Python (no browser is downloaded), and what the page tests check with it. A pytest plugin
(``conftest.pytest_plugins``): its ``browser`` fixture serves every test module."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.conftest import ARTIFACTS

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Waits are generous: the machine is shared by several test runs.
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems:
    """Console errors, CSP violations included, and uncaught exceptions seen by a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        # Failed API calls the page handles (401/403 on purpose) are logged by Chromium as
        # "Failed to load resource"; anything else at error level is a bug in the page.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(msg.text)


def open_page(browser: Browser, *, width: int = 1280, height: int = 900,
              color_scheme: str = "light") -> tuple[Page, PageProblems]:
    context = browser.new_context(viewport={"width": width, "height": height},
                                  color_scheme=color_scheme, accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    return page, PageProblems(page)


def screenshot(page: Page, name: str) -> None:
    """Keep a full-page screenshot under test-artifacts/."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def overflow(page: Page) -> int:
    """The page's scroll width (more than the viewport: something sticks out sideways)."""
    return page.evaluate("() => document.scrollingElement.scrollWidth")


def luminance(css_color: str) -> float:
    """WCAG relative luminance of an ``rgb(...)`` colour."""
    channels = [int(x) / 255 for x in re.findall(r"\d+", css_color)[:3]]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(page: Page, selector: str, background_selector: str) -> float:
    """The WCAG contrast ratio of ``selector``'s text on ``background_selector``'s background."""
    for css in (selector, background_selector):
        page.locator(css).first.wait_for(state="attached")
    fg, bg = page.evaluate(
        "([a, b]) => [getComputedStyle(document.querySelector(a)).color,"
        " getComputedStyle(document.querySelector(b)).backgroundColor]",
        [selector, background_selector])
    high, low = sorted([luminance(fg), luminance(bg)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def focused_id(page: Page) -> str:
    return page.evaluate("() => document.activeElement && document.activeElement.id")


def tab_to(page: Page, element_id: str, *, presses: int = 15) -> None:
    """Press Tab until the element has focus (as a keyboard user would)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if focused_id(page) == element_id:
            return
    raise AssertionError(f"Tab never reached #{element_id}")
