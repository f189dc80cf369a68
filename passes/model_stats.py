"""What pruning passes measure about a model: parameters, MACs, zeros per layer, the size and batch-1
latency of its ONNX export, and the build metric on the validation set (reported, never optimised on)."""

from __future__ import annotations

import io
import zipfile
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deployc.compiler.contracts import Context
from deployc.core import memory
from deployc.core.ort import session
from deployc.core.state import ModelState, PassRecord, Table
from deployc.core.timing import median_ms

PRUNABLE = ("Conv1d", "Conv2d", "Conv3d", "Linear")  # layer types whose weights the pruning passes touch


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int
    nonzero_params: int
    onnx_bytes: int | None = None
    onnx_zip_bytes: int | None = None  # deflate-compressed: where unstructured zeros actually pay off
    onnx_ms: float | None = None  # onnxruntime CPU, batch 1, median
    metric: float | None = None  # the build metric on data.validation

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def params_and_macs(module: Any, state: ModelState) -> tuple[int, int]:
    """Parameter count and multiply-accumulates of one batch-1 forward (Torch-Pruning's op counter)."""
    import torch
    import torch_pruning as tp

    with torch.no_grad(), redirect_stdout(io.StringIO()):  # the counter can print unsupported-module notices
        macs, params = tp.utils.count_ops_and_params(module.eval(), state.example_tensors())
    return int(params), int(macs)


def prunable_layers(module: Any) -> dict[str, Any]:
    """Conv/Linear layers by qualified name, in registration order."""
    return {n: m for n, m in module.named_modules() if type(m).__name__ in PRUNABLE and m.weight is not None}


def layer_sparsity(module: Any) -> dict[str, tuple[int, int]]:
    """(zeros, total) of each prunable layer's weight."""
    return {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in prunable_layers(module).items()}


def onnx_size_and_latency(module: Any, state: ModelState, runs: int = 30) -> tuple[int, int, float]:
    """Bytes of the fp32 ONNX export, its zip (deflate) size, and onnxruntime's median batch-1 latency."""
    from deployc.passes.export import export_onnx

    blob = export_onnx(module, state).SerializeToString()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.onnx", blob)
    sess = session(blob, threads=1)  # one thread: timings comparable on a shared 2-core machine
    feed = state.example_inputs(batch=1)
    return len(blob), len(buf.getvalue()), median_ms(lambda: sess.run(None, feed), runs, warmup=5)


def validation_metric(module: Any, state: ModelState, ctx: Context | None) -> float | None:
    """The build's metric on data.validation when it compares against labels; None otherwise."""
    import torch

    from deployc.data.metrics import get_metric

    data = ctx.validation if ctx else None
    if data is None or data.labels is None or any(s.name not in data.inputs for s in state.inputs):
        return None
    metric = get_metric(ctx.config)
    module.eval()
    outs = []
    with torch.no_grad():
        names = [s.name for s in state.inputs]
        batches = data.within_budget(memory.module_estimate(module, names), ctx.config.data.batch_size, "the metric")
        for x, _ in data.batches(batches):
            out = module(*[torch.from_numpy(x[s.name]) for s in state.inputs])
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).numpy())
    outputs = np.concatenate(outs)
    if not metric.needs_labels and data.labels.shape != outputs.shape:
        return None
    return float(metric.fn([outputs], data.labels))


def measure(module: Any, state: ModelState, ctx: Context | None, onnx: bool = True) -> ModelStats:
    params, macs = params_and_macs(module, state)
    nonzero = sum(int((p != 0).sum()) for p in module.parameters())
    size = onnx_size_and_latency(module, state) if onnx else (None, None, None)
    return ModelStats(params, macs, nonzero, *size, metric=validation_metric(module, state, ctx))


def ratio(after: float | None, before: float | None) -> float | None:
    return None if after is None or not before else after / before


def summary_row(method: str, before: ModelStats, after: ModelStats) -> list[str]:
    """One row of the pruning summary table (see SUMMARY_HEADER)."""

    def num(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    delta = None if before.metric is None or after.metric is None else after.metric - before.metric
    return [
        method,
        f"{before.params:,} → {after.params:,}",
        num(ratio(after.params, before.params), ".3f") + "×",
        f"{before.nonzero_params:,} → {after.nonzero_params:,}",
        f"{before.macs:,} → {after.macs:,}",
        num(ratio(after.macs, before.macs), ".3f") + "×",
        f"{num(before.metric, '.4f')} → {num(after.metric, '.4f')}",
        num(None if delta is None else delta * 100, "+.2f"),
        f"{num(before.onnx_ms, '.3f')} → {num(after.onnx_ms, '.3f')}",
        num(ratio(after.onnx_ms, before.onnx_ms), ".2f") + "×",
        f"{_kb(before.onnx_bytes)} → {_kb(after.onnx_bytes)}",
        f"{_kb(before.onnx_zip_bytes)} → {_kb(after.onnx_zip_bytes)}",
    ]


SUMMARY_HEADER = (
    "method",
    "params",
    "params ×",
    "non-zero params",
    "MACs",
    "MACs ×",
    "metric",
    "Δ metric (pts)",
    "onnx fp32 ms (batch 1)",
    "latency ×",
    "onnx size",
    "onnx zip size",
)
SUMMARY_TIMED = frozenset({8, 9})  # the wall-clock columns of SUMMARY_HEADER


def summary_table(title: str, rows: list[list[str]]) -> Table:
    return Table(title, SUMMARY_HEADER, tuple(map(tuple, rows)), SUMMARY_TIMED)


def _kb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1024:.1f} KB"


def stats_metrics(before: ModelStats, after: ModelStats) -> dict[str, Any]:
    """Flat numbers for the pass record (the manifest keeps them machine-readable)."""
    out: dict[str, Any] = {
        "params_before": before.params,
        "params_after": after.params,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "nonzero_before": before.nonzero_params,
        "nonzero_after": after.nonzero_params,
        "params_ratio": ratio(after.params, before.params),
        "macs_ratio": ratio(after.macs, before.macs),
    }
    if before.metric is not None and after.metric is not None:
        out.update(metric_before=before.metric, metric_after=after.metric)
    if before.onnx_bytes is not None and after.onnx_bytes is not None:
        out.update(
            onnx_bytes_before=before.onnx_bytes,
            onnx_bytes_after=after.onnx_bytes,
            onnx_zip_bytes_before=before.onnx_zip_bytes,
            onnx_zip_bytes_after=after.onnx_zip_bytes,
        )
    return out


def stats_timings(before: ModelStats, after: ModelStats) -> dict[str, float]:
    """The wall-clock numbers (timings.json): ONNX batch-1 latency before and after."""
    if before.onnx_ms is None or after.onnx_ms is None:
        return {}
    return {
        "onnx_ms_before": before.onnx_ms,
        "onnx_ms_after": after.onnx_ms,
        "latency_ratio": ratio(after.onnx_ms, before.onnx_ms),
    }


def stats_from_record(record: PassRecord, which: str) -> ModelStats:
    """Rebuild the before/after ModelStats a pruning pass recorded (for the finetune summary)."""

    def get(k: str) -> Any:
        return record.metrics.get(f"{k}_{which}", record.timings.get(f"{k}_{which}"))

    return ModelStats(
        get("params") or 0,
        get("macs") or 0,
        get("nonzero") or 0,
        get("onnx_bytes"),
        get("onnx_zip_bytes"),
        get("onnx_ms"),
        get("metric"),
    )
