"""What ranking layers for fallback costs on a real model (YOLOv8n by default: 64 Convs): one quantization per
layer (passes/sensitivity.py single_layer_errors, what quantize.tune did) against one fp32 and one int8 run with
every intermediate tensor exposed (fallback_units, what the remedies' fallback stage does).

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache .venv/bin/python benchmarks/sensitivity_cost.py --out /tmp/sens [--model yolov8n]

The per-layer method is timed on --layers layers and extrapolated to every quantizable node.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import prepare
from zoo_lib import catalog, fetch

from deployc.data.dataset import Dataset
from deployc.passes.quantize import Int8Config, quantize_int8
from deployc.passes.sensitivity import QUANTIZABLE, fallback_units, single_layer_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov8n")
    parser.add_argument("--out", default="sensitivity-cost")
    parser.add_argument("--samples", type=int, default=32, help="samples the ranking runs on")
    parser.add_argument("--layers", type=int, default=3, help="layers the per-layer method is timed on")
    args = parser.parse_args(argv)
    model = catalog.BY_NAME[args.model]
    config = prepare(model, Path(args.out).resolve(), fetch.cache_dir(None))
    arrays = np.load(config.parent / "data.npz")
    proto = onnx.load(str(config.parent / yaml.safe_load(config.read_text())["model"]["onnx"]))
    names = [i.name for i in proto.graph.input]
    inputs = {n: arrays[f"calib_{n}"] if f"calib_{n}" in arrays else arrays[n] for n in names}
    data = Dataset({n: v[: args.samples] for n, v in inputs.items()}, None, args.model)
    calib = Dataset({n: v[:128] for n, v in inputs.items()}, None, args.model)
    candidates = [n.name for n in proto.graph.node if n.op_type in QUANTIZABLE]
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)

    t0 = time.perf_counter()
    int8 = quantize_int8(proto, calib, Int8Config())
    quantize_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    units = fallback_units(proto, int8, data)
    units_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    single_layer_errors(
        proto, data, lambda p, only: quantize_int8(p, calib, Int8Config(), only=only), candidates[: args.layers]
    )
    per_layer_s = (time.perf_counter() - t0) / args.layers
    rows = [
        ("model", f"{args.model}: {convs} Convs, {len(candidates)} quantizable nodes"),
        ("one full int8 quantization (128 calibration samples)", f"{quantize_s:.1f} s"),
        (
            f"fallback_units: one fp32 + one int8 run on {args.samples} samples",
            f"{units_s:.1f} s ({len(units)} groups)",
        ),
        (
            f"single_layer_errors: one quantization per node (timed on {args.layers})",
            f"{per_layer_s:.1f} s/node → {per_layer_s * len(candidates) / 60:.1f} min for {len(candidates)} nodes",
        ),
    ]
    text = "\n".join(f"| {a} | {b} |" for a, b in [("what", "wall time"), ("---", "---"), *rows])
    print(text)
    (Path(args.out) / "sensitivity_cost.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
