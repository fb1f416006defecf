"""The dashboard's bundled assets: Chart.js is the version package.json pins, with its licences, and
the package data ships it; the page loads nothing from another host."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from nimbus.api.dashboard import STATIC

ROOT = Path(__file__).resolve().parents[2]


def test_bundled_chartjs_is_the_pinned_version_with_its_licences() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["chart.js"]
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/chart.js"]["version"] == pinned
    banner = (STATIC / "chart.umd.min.js").read_text()[:200]
    assert re.search(r"Chart\.js v(\S+)", banner).group(1) == pinned
    assert "MIT License" in (STATIC / "chart.js.LICENSE.md").read_text()
    assert "MIT License" in (STATIC / "kurkle-color.LICENSE.md").read_text()


def test_the_package_data_ships_the_static_folder() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "static/*" in pyproject["tool"]["setuptools"]["package-data"]["nimbus.api"]
    assert STATIC == ROOT / "shared" / "nimbus" / "api" / "static"


def test_the_page_references_only_its_own_files() -> None:
    html = (STATIC / "dashboard.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith(("dashboard/static/", "data:")) for s in sources)
    for source in sources:
        if source.startswith("dashboard/static/"):
            assert (STATIC / source.removeprefix("dashboard/static/")).is_file(), source
    script = (STATIC / "dashboard.js").read_text()
    assert not re.search(r"https?://", script)
