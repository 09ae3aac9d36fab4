"""Playwright on Debian's Chromium (``apt-get install chromium``; never ``playwright install``).

pytest-playwright's ``browser`` fixture launches through ``browser_type_launch_args``; here it
points at the system's chromium with the flags a root, headless, offline machine needs. Without
the chromium package the browser tests skip, naming it (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("the browser tests need Debian's chromium package (apt-get install chromium; scripts/test.sh "
                    "installs it)")
    return {**browser_type_launch_args, "executable_path": path, "args": CHROMIUM_ARGS, "headless": True}
