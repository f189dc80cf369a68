"""The plots of the reports: metric against a cost (latency, size) with the Pareto front, the drift budget and
labels placed so none overlaps another; per-layer sensitivity bars. Figures are drawn without pyplot (no global
state) and embedded as base64 PNGs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from deployc.core.config import metric_label
from deployc.outputs.report import PERCENT_METRICS


def pareto_front(
    pts: list[dict[str, Any]], cost: str | tuple[str, ...], higher_is_better: bool = True
) -> list[dict[str, Any]]:
    """Points no other point beats on every cost (lower) and the metric at once; sorted by the first cost."""
    costs = (cost,) if isinstance(cost, str) else tuple(cost)
    usable = [p for p in pts if all(p.get(c) is not None for c in costs)]
    sign = 1 if higher_is_better else -1

    def losses(p: dict[str, Any]) -> list[float]:  # every coordinate lower-is-better
        return [p[c] for c in costs] + [-sign * p["metric"]]

    def dominated(p: dict[str, Any]) -> bool:
        mine = losses(p)
        return any(
            all(a <= b for a, b in zip(theirs, mine)) and theirs != mine for theirs in (losses(q) for q in usable)
        )

    return sorted((p for p in usable if not dominated(p)), key=lambda p: p[costs[0]])


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Budget:
    """The drift budget drawn on a plot: the reference metric and the worst metric that still passes."""

    reference: float
    limit: float
    text: str


def budget_of(manifest: dict[str, Any]) -> Budget | None:
    ref, budget = manifest["reference"], manifest.get("budget") or {}
    if not isinstance(ref.get("value"), (int, float)) or not isinstance(budget.get("max_drift"), (int, float)):
        return None
    sign = -1 if ref.get("higher_is_better", True) else 1
    limit = ref["value"] + sign * budget["max_drift"]
    shown = f"{budget['max_drift'] * 100:.2f}%" if ref["metric"] in PERCENT_METRICS else f"{budget['max_drift']:g}"
    return Budget(
        ref["value"],
        limit,
        f"drift budget {shown}: {metric_label(ref['metric'])} {'≥' if sign < 0 else '≤'} {limit:.4g}",
    )


def scatter_png(
    pts: list[dict[str, Any]],
    cost: str,
    xlabel: str,
    metric: str,
    higher_is_better: bool,
    front: list[dict[str, Any]] | None = None,
    chosen: dict[str, Any] | None = None,
    label_all: bool = True,
    budget: Budget | None = None,
) -> str | None:
    """A base64 PNG of scatter_figure(...), or None when no point has this cost."""
    drawn = scatter_figure(pts, cost, xlabel, metric, higher_is_better, front, chosen, label_all, budget)
    return None if drawn is None else _png(drawn[0])


def scatter_figure(
    pts: list[dict[str, Any]],
    cost: str,
    xlabel: str,
    metric: str,
    higher_is_better: bool,
    front: list[dict[str, Any]] | None = None,
    chosen: dict[str, Any] | None = None,
    label_all: bool = True,
    budget: Budget | None = None,
) -> tuple[Any, list[Any]] | None:
    """(Figure, label artists) of metric vs `cost`: green passed / red failed, the Pareto front (default: of every
    point) ringed, `chosen` starred, the drift budget and the reference as horizontal lines. Every cluster of
    points is labelled (or, label_all=False, only the chosen one), each label placed where it overlaps no other
    label, point or the legend (which sits below the axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # Figure without pyplot: no global state
    from matplotlib.ticker import MaxNLocator

    usable = [p for p in pts if p.get(cost) is not None]
    if not usable:
        return None
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {"pass": "#1a7f37", "fail": "#cf222e"}
    for status, name in (("pass", "passed"), ("fail", "failed"), (None, "not validated")):
        group = [p for p in usable if (p["status"] if p["status"] in colours else None) == status]
        if group:
            ax.scatter(
                [p[cost] for p in group], [p["metric"] for p in group], s=60, zorder=3, label=name,
                color=colours.get(status, "#6e7781"),
            )  # fmt: skip
    front = pareto_front(usable, cost, higher_is_better) if front is None else front
    if front:
        ax.step([p[cost] for p in front], [p["metric"] for p in front], where="post", color="#0969da",
                linestyle="--", linewidth=1.2, zorder=2)  # fmt: skip
        ax.scatter([p[cost] for p in front], [p["metric"] for p in front], s=180, facecolors="none",
                   edgecolors="#0969da", linewidths=1.5, label="Pareto front", zorder=4)  # fmt: skip
    if chosen is not None and chosen.get(cost) is not None:
        ax.scatter([chosen[cost]], [chosen["metric"]], s=260, marker="*", color="#bf8700", label="chosen", zorder=5)
    ys = [p["metric"] for p in usable]
    if budget is not None:
        spread = max(ys) - min(ys)
        far = spread > 0 and min(abs(budget.limit - y) for y in ys) > 3 * spread  # it would squeeze every point
        ax.axhline(budget.reference, color="#57606a", linestyle=":", linewidth=1, label="reference (model as loaded)")
        ys.append(budget.reference)
        if far:
            ax.plot([], [], color="#cf222e", linestyle="--", linewidth=1.2, label=f"{budget.text} (off the plot)")
        else:
            ax.axhline(budget.limit, color="#cf222e", linestyle="--", linewidth=1.2, label=budget.text)
            ys.append(budget.limit)
    xs = [p[cost] for p in usable]
    if min(xs) > 0 and max(xs) / min(xs) > 30:  # costs spanning orders of magnitude: every point stays readable
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))
    span = (max(ys) - min(ys)) or abs(max(ys)) * 0.01 or 0.01
    ax.set_ylim(min(ys) - 0.18 * span, max(ys) + 0.18 * span)
    ax.margins(x=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)  # plain metric values, not "1e-5 + 9.999e-1" offsets
    fig.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    groups = (
        _label_groups(usable, cost)
        if label_all
        else [(chosen[cost], chosen["metric"], chosen["label"])]
        if chosen and chosen.get(cost) is not None
        else []
    )
    return fig, place_labels(fig, ax, groups, [(p[cost], p["metric"]) for p in usable])


# candidate offsets (points) around a point, nearest first: right, left, above, below, then the diagonals, farther
_RINGS = (8, 16, 28, 44, 64)
_ANGLES = ((1, 0.3), (-1, 0.3), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1), (1, -0.3), (-1, -0.3))


def place_labels(fig: Any, ax: Any, groups: list[tuple[float, float, str]], marks: list[tuple[float, float]]) -> list:
    """Annotate each (x, y, text) at the first offset where its box overlaps no placed label, no point and stays
    inside the axes; a label set away from its point gets a leader line. Returns the annotations."""
    fig.canvas.draw()  # fixes the constrained layout and the axis limits the boxes are measured against
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    for x, y in marks:
        cx, cy = ax.transData.transform((x, y))
        taken.append((cx - 9, cy - 9, cx + 9, cy + 9))  # a marker's footprint (s=60 is ~8 px across)
    placed = []
    for x, y, text in sorted(groups, key=lambda g: (g[0], -g[1])):
        ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 3), fontsize=8, zorder=6)
        ann.set_in_layout(False)  # the layout is fixed; a label never moves the axes
        best, best_cost = None, None
        for ring in _RINGS:
            for dx, dy in _ANGLES:
                ann.xyann = (dx * ring, dy * ring)
                ann.set_ha("left" if dx > 0 else "right" if dx < 0 else "center")
                ann.set_va("bottom" if dy > 0 else "top" if dy < 0 else "center")
                b = ann.get_window_extent(renderer)
                box = (b.x0 - 2, b.y0 - 2, b.x1 + 2, b.y1 + 2)
                outside = b.x0 < frame.x0 or b.x1 > frame.x1 or b.y0 < frame.y0 or b.y1 > frame.y1
                cost = sum(_overlap(box, t) for t in taken) + (1e6 if outside else 0)
                if best_cost is None or cost < best_cost:
                    best, best_cost = (ann.xyann, ann.get_ha(), ann.get_va(), box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        offset, ha, va, box = best
        ann.remove()
        far = max(abs(offset[0]), abs(offset[1])) > _RINGS[0]  # set away from its point: a leader line shows whose
        ann = ax.annotate(
            text, (x, y), textcoords="offset points", xytext=offset, ha=ha, va=va, fontsize=8, zorder=6,
            arrowprops={"arrowstyle": "-", "color": "#8c959f", "linewidth": 0.7, "shrinkB": 5} if far else None,
        )  # fmt: skip
        ann.set_in_layout(False)
        taken.append(box)
        placed.append(ann)
    return placed


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _label_groups(pts: list[dict[str, Any]], cost: str) -> list[tuple[float, float, str]]:
    """One label per cluster of (nearly) coincident points, e.g. 'onnx/fp32, tflite/fp32'; sorted by cost."""
    xs, ys = [p[cost] for p in pts], [p["metric"] for p in pts]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[list[dict[str, Any]]] = []
    for p in sorted(pts, key=lambda p: p[cost]):
        near = next(
            (
                g
                for g in groups
                if abs(g[0][cost] - p[cost]) < 0.01 * dx and abs(g[0]["metric"] - p["metric"]) < 0.01 * dy
            ),
            None,
        )
        if near is None:
            groups.append([p])
        else:
            near.append(p)
    return [(g[0][cost], g[0]["metric"], ", ".join(p["label"] for p in g)) for g in groups]


def sensitivity_chart(rows: list[dict[str, Any]], title: str) -> str:
    from matplotlib.figure import Figure

    rows = sorted(rows, key=lambda r: r["error"], reverse=True)[:30]  # the 30 most sensitive layers stay readable
    fig = Figure(figsize=(7.5, 0.8 + 0.28 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    ax.barh([str(r["layer"]) for r in rows][::-1], [r["error"] for r in rows][::-1], color="#0969da")
    ax.set_xlabel("error when only this layer is quantized")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)
