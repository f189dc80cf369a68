"""report.html: self-contained (plots are decodable base64 PNGs), every artifact and table shown."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser

import pytest

from deployc.outputs.plots import pareto_front
from deployc.outputs.report import report_view
from deployc.outputs.report_html import render_html, write_html_report

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


_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f]")  # emoji, dingbats, symbols, variation selector


def _crowded(demo_build, proxy: bool = True) -> dict:
    """The demo manifest with 11 artifacts, some nearly coincident, some failed, three TensorRT proxies."""
    m = copy.deepcopy(demo_build.manifest)
    timings = copy.deepcopy(demo_build.timings)
    base, arts = m["artifacts"][0], []
    ref = m["reference"]["value"]
    for target, precision, drop, ms, size in (
        [
            ("onnx", "fp32", 0, 0.021, 80_000), ("onnx", "fp16", 0, 0.022, 41_000), ("onnx", "int8", 0.002, 0.014, 23_000),
            ("onnx", "dynamic", 0.0007, 0.020, 30_000), ("tflite", "fp32", 0, 0.024, 81_000),
            ("tflite", "fp16", 0, 0.025, 42_000), ("tflite", "int8", 0.016, 0.015, 24_000),
            ("tflite", "dynamic", 0.001, 0.021, 31_000), ("tensorrt", "fp32", 0, 24.0, 80_500),
            ("tensorrt", "int8", 0.003, 25.1, 25_000), ("tensorrt", "fp16", 0, 23.0, 41_500),
        ]
    ):  # fmt: skip
        a = copy.deepcopy(base)
        a.update(target=target, precision=precision, bytes=size, path=f"{target}/digits.{precision}.onnx")
        a["metrics"] = dict(a["metrics"], metric=ref - drop, drift=drop)
        a["gate"] = {"status": "fail" if drop > 0.01 else "pass", "reason": "x " * (60 if drop > 0.01 else 2)}
        if target == "tensorrt" and proxy:
            a["runtime"] = "onnxruntime (TensorRT proxy)"
            a["details"] = dict(a.get("details") or {}, engine="not built (no CUDA GPU visible)")
        timings["artifacts"][f"{target}/{precision}"] = {"latency_ms_batch1": ms}
        arts.append(a)
    m["artifacts"] = arts
    return report_view(m, timings)


def test_report_has_no_emoji_and_draws_the_budget(demo_build, tmp_path):
    page = write_html_report(demo_build.manifest, tmp_path, demo_build.timings).read_text(encoding="utf-8")
    assert not _EMOJI.search(page)
    assert '<svg class="icon"' in page  # the gate icons are drawn, no font needed
    assert "Dashed red line: the drift budget 1.00%: top1 ≥" in page
    from deployc.outputs.plots import budget_of, scatter_figure
    from deployc.outputs.report_html import points

    view = report_view(demo_build.manifest, demo_build.timings)
    budget = budget_of(view)
    assert budget.limit == pytest.approx(view["reference"]["value"] - 0.01)
    fig, _ = scatter_figure(points(view), "ms", "ms", "top1", True, budget=budget)
    drawn = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    ys = [p["metric"] for p in points(view) if p.get("ms") is not None]
    spread = max(ys) - min(ys)
    if spread > 0 and min(abs(budget.limit - y) for y in ys) > 3 * spread:  # the points sit far above the budget
        assert drawn[f"{budget.text} (off the plot)"] == []  # named in the legend, not squeezing every point
    else:
        assert drawn[budget.text][0] == pytest.approx(budget.limit)  # the budget line sits at reference − max_drift


def test_plot_labels_never_overlap_on_a_crowded_plot(demo_build):
    from matplotlib.text import Text

    from deployc.outputs.plots import budget_of, scatter_figure
    from deployc.outputs.report_html import points

    view = _crowded(demo_build, proxy=False)
    pts = points(view)
    for p in pts:
        p["size"] = p["bytes"] / 1024
    for cost in ("ms", "size"):
        fig, labels = scatter_figure(pts, cost, cost, "top1", True, budget=budget_of(view))
        renderer = fig.canvas.get_renderer()
        frame = fig.axes[0].get_window_extent(renderer)
        for label in labels:
            label.update_positions(renderer)
        boxes = [Text.get_window_extent(label, renderer) for label in labels]  # the text, not its leader line
        assert sum(len(label.get_text().split(", ")) for label in labels) == len(pts)  # every point is named
        for i, a in enumerate(boxes):
            assert frame.x0 <= a.x0 and a.x1 <= frame.x1 and frame.y0 <= a.y0 and a.y1 <= frame.y1
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (labels[i].get_text(), cost)


def test_proxy_latency_stays_off_the_latency_axis_and_reads_proxy(demo_build):
    from deployc.outputs.report import render_report
    from deployc.outputs.report_html import points

    view = _crowded(demo_build)
    by_label = {p["label"]: p for p in points(view)}
    assert by_label["tensorrt/int8"]["ms"] is None and by_label["tensorrt/int8"]["proxy"] == "onnxruntime"
    assert by_label["onnx/int8"]["ms"] == pytest.approx(0.014)
    parsed = _parse(render_html(view))
    row = parsed.cells.index("tensorrt") if "tensorrt" in parsed.cells else None
    assert row is not None and "proxy" in parsed.cells[row : row + 10]  # the ms column says proxy
    assert "24.000" not in parsed.cells  # the proxy's onnxruntime time is no table figure
    md = render_report(view)
    assert "| tensorrt | fp32 |" in md and "| proxy |" in md and "measured on onnxruntime, a proxy" in md
