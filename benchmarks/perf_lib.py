"""Shared by the performance benchmarks: interleaved timing through deployc.core.timing, the table they print, and
onnxruntime's per-op profile (where the time of an ONNX graph goes)."""

from __future__ import annotations

import collections
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.timing import Clock, Rounds, interleaved, machine


def ort_runner(path: Path, feed: dict[str, np.ndarray], threads: int) -> Callable[[], Any]:
    from deployc.core.ort import session

    sess = session(path, threads)
    return lambda: sess.run(None, feed)


def time_table(
    candidates: dict[str, Callable[[], Any]],
    baseline: str,
    clock: Clock,
    rounds: int,
    per_round: int,
    sizes: dict[str, int | None] | None = None,
) -> tuple[Rounds, str]:
    """Time the candidates in interleaved rounds; (the rounds, a markdown table with ratios to `baseline`)."""
    from deployc.outputs.report import human_bytes

    result = interleaved(candidates, rounds=rounds, per_round=per_round, clock=clock)
    unit = "CPU ms (calling thread)" if clock == "thread_cpu" else "wall ms"
    lines = [
        f"| candidate | median {unit} | IQR | × {baseline} (in-round median) | ratio IQR | size | stable |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in candidates:
        t, r = result.times[name], result.ratio(name, baseline)
        size = human_bytes((sizes or {}).get(name)) if (sizes or {}).get(name) else "—"
        stable = "unstable" if result.unstable(name, baseline) else "yes"
        lines.append(f"| {name} | {t.median:.2f} | {t.iqr:.2f} | {r.median:.3f} | {r.iqr:.3f} | {size} | {stable} |")
    where = machine()
    lines.append(
        f"\n{rounds} rounds × {per_round} calls per candidate, after warm-up; {where['cpu']}, {where['cores']} cores; "
        f"load average {result.load_before:.1f} before, {result.load_after:.1f} after"
    )
    return result, "\n".join(lines)


def ratio_interval(
    rounds: Rounds, name: str, baseline: str, level: float = 0.95, resamples: int = 4000
) -> tuple[float, float]:
    """A bootstrap interval of the median in-round ratio name/baseline: rounds resampled with replacement (each
    round's two medians stay paired, so load shared within a round cancels)."""
    from zoo_lib.resample import interval

    pairs = [m / b for m, b in zip(rounds.round_medians[name], rounds.round_medians[baseline]) if b > 0]
    values = np.asarray(pairs, np.float64)
    idx = np.random.default_rng(0).integers(0, len(values), (resamples, len(values)))
    return interval(np.median(values[idx], axis=1), level)


def speed_verdict(low: float, high: float) -> str:
    """'faster' or 'slower' when the whole interval of name/baseline is on one side of 1, else 'tie'."""
    return "faster" if high < 1.0 else "slower" if low > 1.0 else "tie"


def op_profile(path: Path, feed: dict[str, np.ndarray], threads: int = 1, runs: int = 20) -> dict[str, float]:
    """Kernel ms per node, summed by op type, from onnxruntime's profiler (the graph as it runs: after
    onnxruntime's fusions and layout changes). The profiler times wall clock, so each node counts its
    fastest run: preemption on a busy machine can only make a run slower."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="deployc-profile-") as work:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(work, "profile")  # not the current folder
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 3):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["name"], e["args"]["op_name"])].append(e["dur"] / 1000)
    by_op: dict[str, float] = collections.defaultdict(float)
    for (_, op), durations in per_node.items():
        by_op[op] += float(np.min(durations[3:] or durations))
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def profile_table(profiles: dict[str, dict[str, float]], top: int = 10) -> str:
    """Per-op-type ms side by side (e.g. fp32 vs int8), the largest first."""
    names = list(profiles)
    ops = sorted(
        {op for p in profiles.values() for op in p}, key=lambda op: -max(p.get(op, 0) for p in profiles.values())
    )
    lines = ["| op | " + " | ".join(f"{n} ms" for n in names) + " |", "|---|" + "---|" * len(names)]
    for op in ops[:top]:
        lines.append(f"| {op} | " + " | ".join(f"{profiles[n].get(op, 0):.3f}" for n in names) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(profiles[n].values()):.3f}**" for n in names) + " |")
    return "\n".join(lines)


def conv_macs(path: Path, feed: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates of every Conv of an fp32 ONNX graph for this input (ONNX shape inference)."""
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:  # the feed's shapes, so that every conv output shape is concrete
        if inp.name in feed:
            for dim, size in zip(inp.type.tensor_type.shape.dim, feed[inp.name].shape):
                dim.dim_value = size
    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*graph.value_info, *graph.output]}
    weights = {i.name: list(i.dims) for i in graph.initializer}
    total = 0
    for n in graph.node:
        if n.op_type == "Conv" and n.input[1] in weights and n.output[0] in shapes:
            out, w = shapes[n.output[0]], weights[n.input[1]]
            total += int(np.prod(out)) * int(np.prod(w[1:]))
    return total


def int8_conv_peak_gmacs(channels: int = 256, size: int = 28, runs: int = 30) -> float:
    """GMAC/s of onnxruntime's int8 convolution on this CPU at its best: one 3×3 conv, 256→256 channels (the
    fast direct kernel, cache-friendly), QDQ uint8 × int8 like deployc's, one thread, CPU time."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_static

    from deployc.core.ort import CalibrationReader
    from deployc.core.timing import measure
    from deployc.data.dataset import Dataset

    with tempfile.TemporaryDirectory(prefix="deployc-peak-") as work:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
        x = torch.randn(1, channels, size, size)
        torch.onnx.export(conv, (x,), f"{work}/conv.onnx", input_names=["x"], dynamo=False)
        data = Dataset(
            {"x": np.random.default_rng(0).standard_normal((8, channels, size, size)).astype(np.float32)}, None, "r"
        )
        quantize_static(
            f"{work}/conv.onnx",
            f"{work}/int8.onnx",
            CalibrationReader(data, 1),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        run = ort_runner(Path(f"{work}/int8.onnx"), {"x": x.numpy()}, threads=1)
        ms = measure(run, runs, warmup=5, clock="thread_cpu").median
        macs = channels * channels * 9 * size * size
        onnx.checker.check_model(f"{work}/int8.onnx")
    return macs / ms / 1e6
