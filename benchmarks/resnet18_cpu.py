"""ResNet-18 (ImageNet-shaped, batch 1, 224×224) on this CPU, in ONE process:
torch eager fp32, onnxruntime fp32, deployc's int8 artifact, and a plain
`onnxruntime.quantization.quantize_static` call on the same exported model.

    .venv/bin/python benchmarks/resnet18_cpu.py [--runs 30] [--threads 2] [--out /tmp/resnet18-bench]

Weights are random (no hub downloads here) and calibration uses random normal images: latency and
size do not depend on either. Prints a markdown table: median ms, ratio to eager, size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from deployc.data import Dataset
from deployc.examples.models import ResNet18
from deployc.ort import CalibrationReader, session
from deployc.passes.export import export_onnx
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.simplify import simplify_proto
from deployc.report import human_bytes
from deployc.state import ModelState, TensorSpec
from deployc.timing import median_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=32, help="calibration images")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="resnet18-")))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = ResNet18().eval()
    state = ModelState(module=model, inputs=(TensorSpec("image", ("batch", 3, 224, 224)),), facts=frozenset({"torch"}))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    calib = Dataset({"image": rng.standard_normal((args.calib, 3, 224, 224)).astype(np.float32)}, None, "random")

    exported = export_onnx(model, state)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {
        "plain": args.out / "plain.fp32.onnx",
        "deployc_fp32": args.out / "deployc.fp32.onnx",
        "deployc_int8": args.out / "deployc.int8.onnx",
        "plain_int8": args.out / "plain.int8.onnx",
    }
    onnx.save(exported, paths["plain"])
    simplified = simplify_proto(exported)
    onnx.save(simplified, paths["deployc_fp32"])
    t0 = time.perf_counter()
    onnx.save(quantize_int8(simplified, calib, Int8Config()), paths["deployc_int8"])
    t_int8 = time.perf_counter() - t0
    from onnxruntime.quantization import quantize_static  # the baseline: one plain call, library defaults

    quantize_static(str(paths["plain"]), str(paths["plain_int8"]), CalibrationReader(calib, 1))

    with torch.no_grad():
        xt = torch.from_numpy(x)
        eager = median_ms(lambda: model(xt), args.runs)
    rows = [("torch eager fp32", eager, None)]
    for label, key in (
        ("onnxruntime fp32 (plain export)", "plain"),
        ("deployc onnx fp32", "deployc_fp32"),
        ("plain quantize_static int8", "plain_int8"),
        ("deployc onnx int8", "deployc_int8"),
    ):
        sess = session(str(paths[key]), args.threads)
        rows.append(
            (label, median_ms(lambda sess=sess: sess.run(None, {"image": x}), args.runs), paths[key].stat().st_size)
        )
    print(
        f"ResNet-18, batch 1, 3×224×224, {args.threads} threads, median of {args.runs} runs "
        f"(torch {torch.__version__}; deployc int8 quantization took {t_int8:.1f} s)\n"
    )
    print("| variant | median ms | × eager | size |\n|---|---|---|---|")
    for label, ms, size in rows:
        print(f"| {label} | {ms:.2f} | {ms / eager:.3f} | {human_bytes(size) if size else '—'} |")
    plain, ours = rows[3][1], rows[4][1]
    print(f"\ndeployc int8 vs plain quantize_static: {ours / plain:.3f}×")


if __name__ == "__main__":
    main()
