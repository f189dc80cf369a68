"""report.html: self-contained (plots are decodable base64 PNGs), every artifact and table shown."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser

import pytest

from deployc.outputs.report import report_view
from deployc.outputs.report_html import pareto_front, render_html, write_html_report

PNG = b"\x89PNG\r\n\x1a\n"


class _Collect(HTMLParser):
    """Table cells and <img> sources of a page (a real parser: the page must be well-formed enough)."""

    def __init__(self):
        super().__init__()
        self.cells: list[str] = []
        self.imgs: list[str] = []
        self.external: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("script", "link") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def _parse(page: str) -> _Collect:
    p = _Collect()
    p.feed(page)
    return p


@pytest.fixture
def rich_manifest(demo_build):
    """The demo manifest plus a failed and a skipped artifact, a sensitivity pass and two pass tables."""
    m = copy.deepcopy(report_view(demo_build.manifest, demo_build.timings))
    failed = copy.deepcopy(m["artifacts"][1])
    failed.update(
        target="tflite",
        path="tflite/digits.int8.tflite",
        bytes=20_000,
        gate={"status": "fail", "reason": "drift +0.0500 exceeds budget 0.0100"},
    )
    failed["metrics"] = dict(failed["metrics"], metric=0.9, drift=0.05)
    skipped = {
        "target": "tensorrt",
        "precision": "int8",
        "runtime": "tensorrt",
        "path": None,
        "bytes": None,
        "metrics": {},
        "perf": {},
        "gate": {"status": "skipped", "reason": "no GPU <here> & no TensorRT"},
    }
    m["artifacts"] += [failed, skipped]
    m["status"] = "failed"
    m["passes"] = [
        {
            "name": "quantize.tune",
            "config": {},
            "modified": True,
            "metrics": {"sensitivity": [{"layer": f"conv{i}", "error": 0.1 * i} for i in range(5)]},
            "tables": [
                {"title": "Table 4.2 graph optimisation", "header": ["variant"], "rows": [["plain"]]},
                {"title": "Excluded layers", "header": ["layer"], "rows": [["conv4"]]},
            ],
        }
    ]
    m["timings"]["passes"] = [
        {
            "name": "quantize.tune",
            "seconds": 0.5,
            "cached": False,
            "tables": [
                {"title": "Table 4.2 graph optimisation", "header": ["variant", "ms"], "rows": [["plain", 1.5]]},
                {"title": "Excluded layers", "header": ["layer"], "rows": [["conv4"]]},
            ],
        }
    ]
    return report_view(m, m["timings"])


def test_demo_report_is_self_contained_with_decodable_plots(demo_build, tmp_path):
    path = write_html_report(demo_build.manifest, tmp_path, demo_build.timings)
    page = path.read_text(encoding="utf-8")
    parsed = _parse(page)
    assert parsed.external == []  # nothing loads from outside the file
    assert len(parsed.imgs) == 2  # accuracy vs latency, accuracy vs size
    for src in parsed.imgs:
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    for a in demo_build.manifest["artifacts"]:
        assert a["precision"] in parsed.cells
        assert f"{a['metrics']['metric']:.4f}" in parsed.cells
    assert "pass" in parsed.cells
    assert not list(tmp_path.glob(".report.html.tmp-*"))  # written via a temp file and renamed


def test_fail_skip_sensitivity_and_every_pass_table_render(rich_manifest):
    page = render_html(rich_manifest)
    parsed = _parse(page)
    assert "fail" in parsed.cells and "skipped" in parsed.cells
    assert "TFLite" in parsed.cells  # format comes from the file suffix
    assert "no GPU <here> & no TensorRT" in parsed.cells  # escaped in the HTML, intact once parsed
    assert "<here>" not in page
    assert len(parsed.imgs) == 3  # two scatters + the sensitivity chart
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert "Table 4.2 graph optimisation" in titles and "Excluded layers" in titles
    assert "Per-layer sensitivity" in titles
    assert parsed.cells[parsed.cells.index("plain") : parsed.cells.index("plain") + 2] == ["plain", "1.5"]


def test_no_sensitivity_section_without_sensitivity_metrics(demo_build):
    assert "Per-layer sensitivity" not in render_html(report_view(demo_build.manifest, demo_build.timings))


def test_nothing_ran_means_no_plots_but_a_note(rich_manifest):
    m = copy.deepcopy(rich_manifest)
    for a in m["artifacts"]:
        a["metrics"] = {}
    m["passes"] = m["all_passes"] = []
    page = render_html(m)
    assert "<img" not in page and "nothing to plot" in page


def test_pareto_front_keeps_only_undominated_points():
    pts = [
        {"label": "a", "metric": 0.99, "ms": 1.0},
        {"label": "b", "metric": 0.98, "ms": 2.0},  # b dominated by a
        {"label": "c", "metric": 0.95, "ms": 0.5},
        {"label": "d", "metric": 0.995, "ms": 3.0},
        {"label": "e", "metric": 0.99, "ms": None},
    ]
    assert [p["label"] for p in pareto_front(pts, "ms")] == ["c", "a", "d"]
    # lower-is-better metrics (mse): the smallest error at each cost wins
    assert [p["label"] for p in pareto_front(pts, "ms", higher_is_better=False)] == ["c"]
