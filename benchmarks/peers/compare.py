"""Peer int8 quantizers on real pretrained models, scored with onnxruntime against the fp32 model.

    .venv/bin/python benchmarks/peers/compare.py [--models ppocr_cls yolov8n_nudenet] [--threads 1]

Runs in deployc's venv (numpy, onnx, onnxruntime, scikit-learn, pillow); each peer runs in its own
venv through peers.quantize_with_peer. Per model and peer: Q/DQ counts, agreement with fp32 on
held-out crops, file size and batch-1 latency ratio to fp32 (onnxruntime CPU EP, interleaved rounds
after warm-up, median). Writes RESULTS/<model>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from deployc.core.timing import interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers
import real_models

# (label, tool, options): each peer with its library defaults, plus Model Optimizer with fp32 instead
# of its TensorRT-oriented fp16 default for what stays unquantized (fp16 is slow on a CPU EP).
RUNS = [
    ("ort", "ort", {}),
    ("modelopt", "modelopt", {}),
    ("modelopt fp32-rest", "modelopt", {"high_precision_dtype": "fp32"}),
    # onnxruntime's own docstring recommends uint8 activations on x86; its default is int8.
    ("ort act=QUInt8", "ort", {"activation_type": "QUInt8"}),
    ("olive", "olive", {}),
    ("inc", "inc", {}),
]


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # paddle2onnx leftovers make onnxruntime warn once per unused Constant
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_all(sess: ort.InferenceSession, x: np.ndarray, batch: int = 16) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def agreement(model: str, ref: np.ndarray, out: np.ndarray) -> dict:
    if model == "ppocr_cls":  # [N, 2] softmax over 0/180 degrees
        same = ref.argmax(1) == out.argmax(1)
        sure = ref.max(1) > 0.9  # crops fp32 is sure about: flips there are real errors, not coin tosses
        return {
            "top1_agree": float(same.mean()),
            "top1_confident": float(same[sure].mean()),
            "cosine": _cosine(ref, out),
            "predicted_1": float(out.argmax(1).mean()),
        }
    # YOLOv8 head [N, 4+classes, anchors]: boxes in pixels, then per-class sigmoid scores. Boxes dwarf
    # scores, so the cosine is over the class scores alone (cosine_all keeps the whole tensor).
    ref_cls, out_cls = ref[:, 4:], out[:, 4:]
    confident = ref_cls.max(1) > 0.1  # anchors where fp32 sees something
    box_err = np.abs(ref[:, :4] - out[:, :4]).transpose(0, 2, 1)[confident]
    return {
        "top1_agree": float(np.mean(ref_cls.max(2).argmax(1) == out_cls.max(2).argmax(1))),
        "cosine": _cosine(ref_cls, out_cls),
        "cosine_all": _cosine(ref, out),
        "box_mae_px": float(box_err.mean()) if box_err.size else None,
    }


def latency_ratios(paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int, per_round: int) -> dict:
    """Batch-1 median ms per model and its ratio to fp32, from deployc.core.timing's interleaved rounds (load from
    others hits all models alike; ratios are taken within each round)."""
    sessions = {k: session(p, threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: x[:1]} for k, s in sessions.items()}
    result = interleaved(
        {k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}, rounds, per_round, warmup=5
    )
    return {
        k: {
            "ms": result.times[k].median,
            "iqr_ms": result.times[k].iqr,
            "ratio": result.ratio(k, "fp32").median,
            "unstable": result.unstable(k, "fp32"),
        }
        for k in sessions
    }


def compare(model: str, cache: Path, calib_n: int, eval_n: int, threads: int, rounds: int, log) -> dict:
    fp32, calib, evalset = real_models.prepare(model, cache, calib_n, eval_n)
    with np.load(evalset) as npz:
        x = npz[npz.files[0]]
    ref = run_all(session(fp32, threads), x)
    rows, paths = [], {"fp32": fp32}
    for label, tool, options in RUNS:
        out = cache / "out" / f"{model}.{label.replace(' ', '_')}.onnx"
        try:
            report = peers.quantize_with_peer(tool, fp32, calib, out, options=options, log=log)
        except peers.PeerError as exc:
            rows.append({"label": label, "ok": False, "error": exc.report.get("error")})
            continue
        try:
            metrics = agreement(model, ref, run_all(session(out, threads), x))
        except Exception as exc:  # onnxruntime refusing a peer's model is itself a finding
            rows.append({"label": label, **report, "ok": False, "error": f"onnxruntime: {exc}"[:500]})
            continue
        rows.append({"label": label, **report, **metrics, "size_ratio": out.stat().st_size / fp32.stat().st_size})
        paths[label] = out
    lat = latency_ratios(paths, x, threads, rounds, per_round=10 if model == "ppocr_cls" else 3)
    for row in rows:
        row.update({f"latency_{k}": v for k, v in lat.get(row["label"], {}).items()})
    return {
        "model": model,
        "about": real_models.MODELS[model].about,
        "fp32_bytes": fp32.stat().st_size,
        "fp32_ms": lat["fp32"]["ms"],
        "calib_samples": calib_n,
        "eval_samples": eval_n,
        "threads": threads,
        "onnxruntime": ort.__version__,
        "rows": rows,
    }


def table(result: dict) -> str:
    cls = result["model"] == "ppocr_cls"
    extra = "top-1 where fp32 p>0.9" if cls else "box MAE px"
    lines = [
        f"### {result['model']}: {result['about']}",
        f"fp32 {result['fp32_bytes'] / 1e3:.0f} KB, {result['fp32_ms']:.2f} ms batch-1 "
        f"(onnxruntime {result['onnxruntime']}, {result['threads']} thread); calibration "
        f"{result['calib_samples']} crops, scored on {result['eval_samples']} other crops",
        "",
        f"| peer | Q | DQ | QLinear ops | top-1 agree | {extra} | cosine{'' if cls else ' (class scores)'} "
        "| size vs fp32 | latency vs fp32 | quantize s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if not r["ok"]:
            lines.append(f"| {r['label']} | failed: {r['error'][:160]} | | | | | | | | |")
            continue
        second = r["top1_confident"] if cls else r["box_mae_px"]
        lines.append(
            f"| {r['label']} | {r['QuantizeLinear']} | {r['DequantizeLinear']} | {r['qlinear_ops']} | "
            f"{r['top1_agree']:.3f} | {second:.3f} | {r['cosine']:.4f} | {r['size_ratio']:.2f}x | "
            f"{r['latency_ratio']:.2f}x | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(real_models.MODELS), choices=list(real_models.MODELS))
    parser.add_argument("--cache", type=Path, default=peers.peers_dir() / "models")
    parser.add_argument("--results", type=Path, default=peers.peers_dir() / "results")
    parser.add_argument("--calib", type=int, default=64, help="calibration crops")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)

    missing = {k: v for k, v in peers.available_peers().items() if v}
    for tool, reason in missing.items():
        print(f"peer {tool} unavailable: {reason}", file=sys.stderr)
    args.results.mkdir(parents=True, exist_ok=True)
    with open(args.results / "peers.log", "w") as log:
        for model in args.models:
            eval_n = 256 if model == "ppocr_cls" else 64
            result = compare(model, args.cache, args.calib, eval_n, args.threads, args.rounds, log)
            (args.results / f"{model}.json").write_text(json.dumps(result, indent=1, default=str))
            print(table(result) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
