"""Seed table for quantization: static int8 (PTQ), dynamic int8 and QAT on the MobileNetV2-style
depthwise-separable digits model — size, share of compute in int8, top-1 change, batch-1 latency —
and the same on the outlier-channel model of examples/quant_tune.yaml, where plain int8 fails.

    .venv/bin/python benchmarks/quant_table.py [--epochs 20] [--qat-epochs 3] [--runs 300]

Everything runs in one process on onnxruntime's CPU EP with one thread; top-1 is on digits' 450
test images, against the fp32 torch model; QAT fine-tunes on digits' train split only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.core.config import load_config
from deployc.core.state import ModelState, TensorSpec
from deployc.core.timing import median_ms
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.examples.models import DigitsMobileNet
from deployc.passes.export import export_onnx
from deployc.passes.qat import QatConfig, qat
from deployc.passes.quantize import DynamicConfig, Int8Config, quantize_dynamic_int8, quantize_int8
from deployc.passes.simplify import simplify_proto
from deployc.passes.training import TrainConfig, fit

SPEC = (TensorSpec("image", ("batch", 1, 8, 8)),)


def macs(proto: Any) -> tuple[int, int]:
    """(MACs of Conv/Gemm/MatMul layers, of which int8) for one 1×1×8×8 sample, from the graph's shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for d in model.graph.input[0].type.tensor_type.shape.dim[:1]:
        d.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(model.graph.value_info) + list(model.graph.output)
    }
    inits = {i.name: i for i in model.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    total = int8 = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"):
            continue
        w = n.input[1]
        quantized = n.op_type.endswith("Integer")
        if w in dq:
            w, quantized = dq[w], True
        if w not in inits:
            continue
        weight = numpy_helper.to_array(inits[w])
        quantized = quantized or weight.dtype in (np.int8, np.uint8)
        out = shapes.get(n.output[0], [])
        spatial = int(np.prod(out[2:])) if n.op_type.startswith("Conv") and len(out) > 2 else 1
        count = int(np.prod(weight.shape)) * spatial
        total += count
        int8 += count if quantized else 0
    return total, int8


def evaluate(proto: Any, x: np.ndarray, y: np.ndarray, runs: int) -> dict[str, float]:
    from deployc.core.ort import session

    sess = session(proto, threads=1)
    top1 = float((sess.run(None, {"image": x})[0].argmax(1) == y).mean())
    one = {"image": x[:1]}
    ms = median_ms(lambda: sess.run(None, one), runs, warmup=20)
    total, int8 = macs(proto)
    return {
        "top1": top1,
        "bytes": len(proto.SerializeToString()),
        "ms": ms,
        "int8_share": int8 / total if total else 0.0,
    }


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--qat-epochs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x_tr, y_tr = digits_arrays("train")
    x_te, y_te = digits_arrays("test")
    train = Dataset({"image": x_tr}, y_tr, "digits:train")
    # qat() reads only ctx.train and ctx.instruments; the config is a placeholder that never loads
    ctx = Context(
        load_config({"model": {"factory": "unused:unused"}}), train, train, None, Path("."), Instruments(quiet=True)
    )

    t0 = time.perf_counter()
    model = DigitsMobileNet()
    fit(model, train, TrainConfig(epochs=args.epochs, lr=3e-3, holdout=0.0), None, ["image"])
    with torch.no_grad():
        ref_top1 = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    print(
        f"trained DigitsMobileNet ({sum(p.numel() for p in model.parameters())} params) in "
        f"{time.perf_counter() - t0:.0f} s: torch fp32 top-1 {ref_top1:.4f}",
        file=sys.stderr,
    )

    state = ModelState(module=model, inputs=SPEC)
    fp32 = simplify_proto(export_onnx(model, state))
    calib = train.take(256)
    rows: list[tuple[str, Any, str]] = [("fp32", fp32, "—")]
    for per_channel in (True, False):
        label = "per-channel" if per_channel else "per-tensor"
        rows.append(
            (
                f"static int8, {label}",
                quantize_int8(fp32, calib, Int8Config(per_channel=per_channel)),
                f"minmax calibration, {len(calib)} samples",
            )
        )
    rows.append(("dynamic int8", quantize_dynamic_int8(fp32, DynamicConfig()), "MatMul/Gemm weights; Conv stays fp32"))
    for per_channel in (True, False):
        t0 = time.perf_counter()
        converted, _ = qat(model, state, ctx, QatConfig(epochs=args.qat_epochs, holdout=0.0), per_channel)
        proto = simplify_proto(
            export_onnx(converted, ModelState(module=converted, inputs=SPEC))
        )  # as the onnx target does
        label = "per-channel" if per_channel else "per-tensor"
        rows.append((f"QAT int8, {label}", proto, f"{args.qat_epochs} epochs, {time.perf_counter() - t0:.0f} s"))

    table(rows, fp32, x_te, y_te, ref_top1, args.runs, "DigitsMobileNet (depthwise-separable)")

    # the same comparison where plain int8 fails: the outlier-channel model of examples/quant_tune.yaml
    import tempfile

    import onnx

    from deployc.driver.build import build
    from deployc.examples.quant_hostile import hostile

    model = hostile()
    with torch.no_grad():
        ref_top1 = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    state = ModelState(module=model, inputs=SPEC)
    fp32 = simplify_proto(export_onnx(model, state))
    plain = quantize_int8(fp32, calib, Int8Config(samples=256))
    example = Path(__file__).resolve().parents[1] / "examples" / "quant_tune.yaml"
    with tempfile.TemporaryDirectory() as out:  # the build's remedies (quantize.remedies, on by default)
        result = build(example, out=Path(out) / "b", quiet=True)
        int8 = next(a for a in result.manifest["artifacts"] if a["precision"] == "int8")
        remedied = onnx.load(str(result.out_dir / int8["path"]))
    remedies = int8["details"]["remedies"]
    t0 = time.perf_counter()
    converted, _ = qat(model, state, ctx, QatConfig(epochs=args.qat_epochs, holdout=0.0), True)
    qat_proto = simplify_proto(export_onnx(converted, ModelState(module=converted, inputs=SPEC)))
    rows = [
        ("fp32", fp32, "—"),
        ("static int8, per-channel", plain, "minmax calibration, 256 samples"),
        (
            "static int8, remedied",
            remedied,
            f"trial {remedies['chosen_trial']} of {remedies['trials']}; fp32: {', '.join(remedies['fallback'])}",
        ),
        ("QAT int8, per-channel", qat_proto, f"{args.qat_epochs} epochs, {time.perf_counter() - t0:.0f} s"),
    ]
    table(
        rows, fp32, x_te, y_te, ref_top1, args.runs, "HostileDigitsNet (one channel ×1000, examples/quant_hostile.py)"
    )


def table(
    rows: list[tuple[str, Any, str]], fp32: Any, x: np.ndarray, y: np.ndarray, ref_top1: float, runs: int, title: str
) -> None:
    base = evaluate(fp32, x, y, runs)
    print(f"\n{title}\n")
    print(
        "| variant | size | size reduction | MACs in int8 | top-1 | top-1 change vs fp32 torch | ms/sample (batch 1) | speed-up | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, proto, note in rows:
        r = base if proto is fp32 else evaluate(proto, x, y, runs)
        print(
            f"| {name} | {r['bytes'] / 1024:.1f} KB | {base['bytes'] / r['bytes']:.2f}× | {r['int8_share'] * 100:.1f}% | "
            f"{r['top1']:.4f} | {(r['top1'] - ref_top1) * 100:+.2f} pt | {r['ms']:.4f} | {base['ms'] / r['ms']:.2f}× | {note} |"
        )


if __name__ == "__main__":
    main()
