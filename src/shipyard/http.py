"""A minimal blocking HTTP client on the standard library, for the CLI (no extra dependency)."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from shipyard.errors import ShipyardError


def post_json(url: str, body: Any, timeout: float = 30, *, token: str | None = None,
              ca_file: str | None = None) -> Any:
    """POST ``body`` as JSON and read the JSON answer; ``token`` is sent as a bearer credential and
    ``ca_file`` verifies an https server (the system store otherwise)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]
        raise ShipyardError(f"server answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise ShipyardError(f"cannot reach {url}: {exc.reason}") from None


def wait_ready(base: str, timeout: float = 30) -> None:
    """Poll /v2/health/ready until it answers 200 or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ShipyardError(f"{base} was not ready within {timeout:.0f}s")
        time.sleep(0.05)
