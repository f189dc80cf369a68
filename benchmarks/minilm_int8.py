"""all-MiniLM-L6-v2 int8 on onnx, tflite and tensorrt (onnxruntime proxy): cosine drift, int8 coverage, size and
batch-1 latency against fp32 (deployc.core.timing's interleaved rounds), with and without quantize.smoothing, beside
onnxruntime's quantize_static defaults on the same fp32 graph.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache .venv/bin/python benchmarks/minilm_int8.py [--out /tmp/minilm-int8] [--alpha 0.8]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import deployc_command, prepare
from zoo_lib import catalog, fetch

from deployc.core.ort import CalibrationReader, session
from deployc.core.timing import interleaved
from deployc.data.dataset import Dataset


def build(config: dict, folder: Path, name: str) -> dict:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = folder / f"build-{name}"
    subprocess.run([*deployc_command(), "build", str(path), "--out", str(out), "--force", "--quiet"], check=False)
    return json.loads((out / "manifest.json").read_text()) | {"out": str(out)}


def ort_default(fp32: Path, data: dict, out: Path) -> Path:
    """onnxruntime's quantize_static with its defaults (every op type it knows, QDQ, uint8 activations)."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = out.with_suffix(".prep.onnx")
    with contextlib.chdir(out.parent):
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
    calib = Dataset({k: data[f"calib_{k}"][:64] for k in ("input_ids", "attention_mask")}, None, "calib")
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prep), str(out), CalibrationReader(calib, 16), quant_format=QuantFormat.QDQ, per_channel=True
        )
    return out


def cosine_drift(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.astype(np.float64), got.astype(np.float64)
    return float(1 - np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def latency_ratios(paths: dict[str, Path], kind: dict[str, str], feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Batch-1 latency of each artifact over its fp32 twin, one intra-op thread, interleaved rounds."""
    from ai_edge_litert.interpreter import Interpreter

    runners = {}
    for name, path in paths.items():
        if kind[name] == "tflite":
            runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner("serving_default")
            args = {f"args_{i}": feed[k].astype(np.int32) for i, k in enumerate(("input_ids", "attention_mask"))}
            runners[name] = lambda r=runner, a=args: r(**a)
        else:
            sess = session(path, 1)
            runners[name] = lambda s=sess: s.run(None, feed)
    rounds = interleaved(runners, rounds=8, per_round=3, clock="thread_cpu")
    base = {"onnx": "onnx/fp32", "tensorrt": "onnx/fp32", "tflite": "tflite/fp32", "ort": "onnx/fp32"}
    return {n: rounds.ratio(n, base[kind[n]]).median for n in paths}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/minilm-int8")
    parser.add_argument("--alpha", type=float, default=0.8, help="quantize.smoothing of the smoothed row")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    model = catalog.BY_NAME["minilm"]
    config_path = prepare(model, out, fetch.cache_dir(None))
    base = yaml.safe_load(config_path.read_text())
    base["data"]["validation"] = str(config_path.parent / "data.npz")
    base["targets"] = {
        "onnx": {"precision": ["fp32", "int8"]},
        "tflite": {"precision": ["fp32", "int8"]},
        "tensorrt": {"precision": ["int8"]},
    }
    base["validate"] = {"max_drift": 0.02, "latency_runs": 3}
    smoothed = copy.deepcopy(base)
    smoothed["quantize"]["smoothing"] = args.alpha
    runs = {"default": build(base, out, "default"), f"smoothing {args.alpha}": build(smoothed, out, "smoothed")}
    data = dict(np.load(config_path.parent / "data.npz"))
    rows, paths, kind, sizes = [], {}, {}, {}
    for label, manifest in runs.items():
        for art in manifest["artifacts"]:
            key = f"{art['target']}/{art['precision']}" + ("" if label == "default" else f" ({label})")
            if art["precision"] == "fp32" and label != "default":
                continue
            paths[key], kind[key] = Path(manifest["out"]) / art["path"], art["target"]
            sizes[key] = art["bytes"]
            cov = (art.get("details") or {}).get("int8_coverage") or {}
            rows.append((key, art["metrics"].get("drift"), cov.get("macs"), art["gate"]["status"]))
    fp32_onnx = paths["onnx/fp32"]
    ort_path = ort_default(fp32_onnx, data, out / "ort-default.int8.onnx")
    feeds = {k: data[k][:64] for k in ("input_ids", "attention_mask")}
    ref = session(fp32_onnx).run(None, feeds)[0]
    key = "onnxruntime quantize_static defaults"
    paths[key], kind[key], sizes[key] = ort_path, "ort", ort_path.stat().st_size
    rows.append((key, cosine_drift(ref, session(ort_path).run(None, feeds)[0]), None, "(64 samples)"))
    ratios = latency_ratios(paths, kind, {k: v[:1] for k, v in feeds.items()})
    lines = [
        "| artifact | cosine drift | int8 MACs | size | latency × fp32 (1 thread) | gate |",
        "|---|---|---|---|---|---|",
    ]
    for name, drift, macs, gate in rows:
        macs_s = "—" if macs is None else f"{macs:.0%}"
        lines.append(f"| {name} | {drift:+.4f} | {macs_s} | {sizes[name] / 1e6:.1f} MB | {ratios[name]:.2f} | {gate} |")
    table = "\n".join(lines)
    (out / "minilm_int8.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
