"""Why Entropy calibration gives the same int8 model as MinMax, measured on the real models.

    .venv/bin/python benchmarks/peers/entropy_check.py [--models ppocr_cls yolov8n_nudenet]

For each variant: sha256 of the quantized file, how many activation scales differ from MinMax,
and agreement with fp32 on held-out crops. The cause is in README.md (onnxruntime's calibrate.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare
import peers
import real_models


def variants(input_name: str, shape: tuple) -> list[tuple[str, str, dict, int | None]]:
    """(label, tool, options, samples): each row is compared with the first row of the same tool and samples."""
    one_batch = f"{input_name}:8x{'x'.join(map(str, shape[1:]))}"  # 8 samples in one calibration step
    return [
        ("ort MinMax (default)", "ort", {}, None),
        ("ort Entropy (defaults: 128 bins, 128 quantized bins)", "ort", {"calibrate_method": "Entropy"}, None),
        # Strided collection calls collect() once per stride, so a later stride can widen the histogram.
        (
            "ort Entropy + CalibStridedMinMax=8",
            "ort",
            {"calibrate_method": "Entropy", "extra_options": {"CalibStridedMinMax": 8}},
            None,
        ),
        (
            "ort Entropy num_bins=2048 (create_calibrator)",
            "ort",
            {"calibrate_method": "Entropy", "calibrator_options": {"num_bins": 2048, "num_quantized_bins": 128}},
            None,
        ),
        ("ort Percentile (defaults: 2048 bins, 99.999, symmetric)", "ort", {"calibrate_method": "Percentile"}, None),
        ("modelopt max", "modelopt", {"calibration_method": "max", "high_precision_dtype": "fp32"}, None),
        ("modelopt entropy (default)", "modelopt", {"high_precision_dtype": "fp32"}, None),
        # Model Optimizer histograms each calibration step apart: with one step nothing can widen them.
        (
            "modelopt max, 8 samples in one step",
            "modelopt",
            {"calibration_method": "max", "high_precision_dtype": "fp32", "calibration_shapes": one_batch},
            8,
        ),
        (
            "modelopt entropy, 8 samples in one step",
            "modelopt",
            {"high_precision_dtype": "fp32", "calibration_shapes": one_batch},
            8,
        ),
    ]


def activation_scales(path: Path) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    scales = {}
    for node in graph.node:  # activation Q nodes: their input is not an initializer (weights are)
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            scales[node.input[0]] = numpy_helper.to_array(inits[node.input[1]])
    return scales


def check(model: str, cache: Path, calib_n: int) -> list[dict]:
    fp32, calib, evalset = real_models.prepare(model, cache, calib_n, 256 if model == "ppocr_cls" else 64)
    with np.load(evalset) as npz:
        npz_name, x = npz.files[0], npz[npz.files[0]]
    ref = compare.run_all(compare.session(fp32, 1), x)
    rows, baseline = [], {}
    for label, tool, options, samples in variants(npz_name, x.shape):
        out = cache / "entropy" / f"{model}.{len(rows)}.onnx"
        try:
            report = peers.quantize_with_peer(tool, fp32, calib, out, samples=samples, options=options, log=sys.stderr)
        except peers.PeerError as exc:
            rows.append({"model": model, "variant": label, "error": exc.report.get("error")})
            continue
        digest, scales = hashlib.sha256(out.read_bytes()).hexdigest(), activation_scales(out)
        base_digest, base_scales = baseline.setdefault((tool, samples), (digest, scales))
        differ = sum(1 for k, v in scales.items() if k not in base_scales or not np.array_equal(v, base_scales[k]))
        metrics = compare.agreement(model, ref, compare.run_all(compare.session(out, 1), x))
        rows.append(
            {
                "model": model,
                "variant": label,
                "identical": digest == base_digest,
                "scales_differ": f"{differ}/{len(scales)}",
                **metrics,
                "seconds": report["seconds"],
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(real_models.MODELS), choices=list(real_models.MODELS))
    parser.add_argument("--cache", type=Path, default=peers.peers_dir() / "models")
    parser.add_argument("--calib", type=int, default=64)
    args = parser.parse_args(argv)
    print(
        "| model | variant | byte-identical to the tool's first row (same samples) | activation scales differing | "
        "top-1 agree | cosine |\n|---|---|---|---|---|---|"
    )
    for model in args.models:
        for r in check(model, args.cache, args.calib):
            if "error" in r:
                print(f"| {model} | {r['variant']} | failed: {r['error'][:120]} | | | |", flush=True)
                continue
            print(
                f"| {model} | {r['variant']} | {'yes' if r['identical'] else 'no'} | {r['scales_differ']} | "
                f"{r['top1_agree']:.3f} | {r['cosine']:.4f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
