"""Playwright on Debian's Chromium (``apt-get install chromium``; never ``playwright install``).

The ``browser`` fixture launches the system's chromium with the flags a root, headless,
offline machine needs. Without
the chromium package the browser tests skip, naming it (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one test module, closed with it.

    Closed with its module, not kept for the session: Playwright's synchronous API keeps an event
    loop running on the main thread while it is started, and every asyncio test after it in
    the same session would fail with "Cannot run the event loop while another loop is running".
    """
    path = chromium_path()
    if path is None:
        pytest.skip("the browser tests need Debian's chromium package (apt-get install chromium; scripts/test.sh "
                    "installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
