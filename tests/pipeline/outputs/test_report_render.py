"""report.html in a real browser: headless Chromium lays it out at 1280 px with no table wider than its box (no
clipped column) and decodes every plot. Skips when no Chromium is installed (apt-get install -y chromium)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deployc.outputs.report_html import write_html_report

_SCRIPT = Path(__file__).parents[3] / "scripts" / "check_report_render.py"
_spec = importlib.util.spec_from_file_location("check_report_render", _SCRIPT)
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

BROWSER = render.find_browser()
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (apt-get install -y chromium)")


def test_a_crowded_report_fits_1280_px_in_chromium(demo_build, tmp_path):
    from tests.pipeline.outputs.test_report_html import _crowded

    view = _crowded(demo_build)
    path = write_html_report(view, tmp_path, view["timings"])
    measured = render.measure(path, 1280, BROWSER)
    assert render.layout_problems(measured) == []
    assert len(measured["tables"]) >= 2 and [i["width"] > 0 for i in measured["images"]] == [True, True]
    png = tmp_path / "report.png"
    render.screenshot(path, png, 1280, 1600, BROWSER)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
