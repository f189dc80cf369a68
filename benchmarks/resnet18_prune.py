"""ResNet-18 (batch 1, 3×224×224): onnxruntime latency of the pruned ONNX artifact vs the unpruned one, in
ONE process, sessions timed round-robin so load on a shared machine hits every variant alike.

    .venv/bin/python benchmarks/resnet18_prune.py [--runs 20] [--threads 2] [--out resnet18_prune.md]

Variants: unpruned; prune.structured with 50% of the channels removed; prune.structured to 50% of the
MACs (free channel counts, and multiples of 8); prune.magnitude at 80% sparsity (dense runtime: expect no speed-up, only a smaller zip).
Weights are random (no hub downloads here): latency and size do not depend on them, accuracy would.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch.nn.utils import prune

from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.examples.models import ResNet18
from deployc.passes.export import export_onnx
from deployc.passes.model_stats import params_and_macs, prunable_layers
from deployc.passes.prune import StructuredConfig, prune_channels
from deployc.passes.simplify import simplify_proto


def magnitude(model: torch.nn.Module, sparsity: float) -> torch.nn.Module:
    layers = [(m, "weight") for m in prunable_layers(model).values()]
    prune.global_unstructured(layers, prune.L1Unstructured, amount=sparsity)
    for m, name in layers:
        prune.remove(m, name)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30, help="timed rounds (each runs every variant once)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("resnet18_prune.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    base = ResNet18().eval()
    state = ModelState(module=base, inputs=(TensorSpec("image", ("batch", 3, 224, 224)),), facts=frozenset({"torch"}))

    variants = {"unpruned": base}
    t0 = time.perf_counter()
    variants["structured 50% channels (l2, per layer)"] = copy.deepcopy(base)
    prune_channels(variants["structured 50% channels (l2, per layer)"], state, None, StructuredConfig(ratio=0.5))
    variants["structured to 50% MACs (l2, per layer)"] = copy.deepcopy(base)
    prune_channels(variants["structured to 50% MACs (l2, per layer)"], state, None, StructuredConfig(target_macs=0.5))
    variants["structured to 50% MACs, round_to 8"] = copy.deepcopy(base)
    prune_channels(
        variants["structured to 50% MACs, round_to 8"], state, None, StructuredConfig(target_macs=0.5, round_to=8)
    )
    variants["magnitude 80% (global)"] = magnitude(copy.deepcopy(base), 0.8)
    prune_s = time.perf_counter() - t0

    x = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    rows, sessions = {}, {}
    for name, model in variants.items():
        params, macs = params_and_macs(model, state)
        blob = simplify_proto(export_onnx(model, state)).SerializeToString()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            zf.writestr("model.onnx", blob)
        sessions[name] = session(blob, args.threads)
        rows[name] = {"params": params, "macs": macs, "bytes": len(blob), "zip": len(buf.getvalue()), "ms": []}
    for sess in sessions.values():
        for _ in range(3):
            sess.run(None, x)
    for _ in range(args.runs):
        for name, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, x)
            rows[name]["ms"].append((time.perf_counter() - t) * 1000)

    ref = rows["unpruned"]
    ref_ms = statistics.median(ref["ms"])
    lines = [
        f"ResNet-18, batch 1, 3×224×224, onnxruntime {ort.__version__} CPU EP, {args.threads} threads, "
        f"median of {args.runs} round-robin runs (pruning took {prune_s:.1f} s)",
        "",
        "| variant | params | params × | MACs (G) | MACs × | onnx size | zip size | ms (median) | latency × |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ms = statistics.median(r["ms"])
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {r['params'] / ref['params']:.3f} | {r['macs'] / 1e9:.3f} | "
            f"{r['macs'] / ref['macs']:.3f} | {r['bytes'] / 2**20:.1f} MB | {r['zip'] / 2**20:.1f} MB | "
            f"{ms:.2f} | {ms / ref_ms:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
