"""A schemathesis check shared by the CLI run (loaded through SCHEMATHESIS_HOOKS) and the Python-API run."""

from __future__ import annotations

import re
from typing import Any

import schemathesis

LEAKS = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|site-packages|"
                   r"(?:/[\w.-]+){2,}\.py\b|/work/|/tmp/|/root/|/home/")


@schemathesis.check
def no_traceback_or_path(ctx: Any, response: Any, case: Any) -> bool | None:
    """A body never shows a traceback or a server-side file path."""
    text = response.content.decode("utf-8", "replace") if response.content else ""
    if found := LEAKS.search(text):
        raise AssertionError(f"{case.method} {case.formatted_path} leaks {found.group(0)!r} in its body")
    return None
