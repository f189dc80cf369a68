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
    path = write_html_report(view, tmp_path, view["timings"], extra_tables=[_bench_table()])
    measured = render.measure(path, 1280, BROWSER)
    assert render.layout_problems(measured) == []
    assert len(measured["tables"]) >= 3 and [i["width"] > 0 for i in measured["images"]] == [True, True]
    png = tmp_path / "report.png"
    render.screenshot(path, png, 1280, 1600, BROWSER)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def _bench_table() -> dict:
    """`deployc bench`'s full table (every column, as report.html shows it) at its widest: long candidate names,
    four-digit latencies on a loaded machine, unstable rows."""
    from deployc.commands.bench import bench_table

    names = ["torch eager fp32", "torch eager fp32, 1 thread", "ort quantize_static (plain)", "litert-torch default"]
    row = dict(bytes=866_000, metric=0.9733, drift=-0.0022, p50_ms=1345.972, iqr_ms=1247.003, p90_ms=1812.029)
    row |= dict(p99_ms=1974.221, throughput=1234.5, peak_mb=1078.0, x_eager_p50=0.000675, x_eager_throughput=21.53)
    row |= dict(x_eager_size=1.08, x_qstatic_p50=1240.0, unstable=True)
    result = dict(model="crowded", metric="top1", batch=32, runs=100, cpu_count=2, load_average=[16.0, 15.3])
    return bench_table(dict(result, rows=[dict(row, name=n) for n in names * 2]))
