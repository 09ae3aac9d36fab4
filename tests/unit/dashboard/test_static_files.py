"""The dashboard's pages load only files the package ships, and the vendored ones are the releases they claim."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import shipyard.dashboard

PACKAGE = Path(shipyard.dashboard.__file__).parent
STATIC = PACKAGE / "static"
ROOT = Path(__file__).parents[3]


def _pages() -> list[Path]:
    return [*sorted((PACKAGE / "templates").glob("*.html")), STATIC / "graphiql.html"]


def test_every_script_and_style_a_page_names_is_in_the_package() -> None:
    named = set()
    for page in _pages():
        text = page.read_text()
        for ref in re.findall(r'(?:src|href)="([^"]+)"', text):
            if ref.startswith(("{{ prefix }}/static/", "/ui/static/")):
                named.add(ref.replace("{{ prefix }}/static/", "").replace("/ui/static/", ""))
    assert {"vendor/htmx.min.js", "vendor/uPlot.iife.min.js", "dashboard.js",
            "vendor/graphiql/graphiql.min.js"} <= named
    assert [n for n in named if not (STATIC / n).is_file()] == []


def test_no_page_or_script_of_ours_reaches_another_host() -> None:
    ours = [*_pages(), *STATIC.glob("*.js"), *STATIC.glob("*.css")]
    elsewhere = re.compile(r"(?:src|href)=\"(?:https?:)?//|url\(\s*['\"]?https?:")
    assert [p.name for p in ours if elsewhere.search(p.read_text())] == []


def test_vendored_files_are_the_releases_the_fetch_script_names() -> None:
    script = (ROOT / "scripts" / "vendor_ui.sh").read_text()
    table = re.findall(r'^  "(\S+) (\S+) (\S+) ([0-9a-f]{64}|-)"$', script, re.MULTILINE)
    assert len(table) >= 7
    for _spec, _inner, target, sha in table:
        path = STATIC / "vendor" / target
        assert path.is_file(), target
        if sha != "-":
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha, target
    readme = (STATIC / "vendor" / "README.md").read_text()
    for spec, *_ in table:  # every release is named with its version in the README
        package, version = spec.rsplit("@", 1)
        assert package in readme and version in readme, spec
