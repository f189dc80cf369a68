"""int8 of real zoo models: deployc's default config against the quantizers users would pick instead, on the same
fp32 graph, calibration samples, validation data and task metric, in one run.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache DEPLOYC_PEERS_DIR=/work/main/.peers \\
        .venv/bin/python benchmarks/peers_int8.py [--models paddleocr-cls,yolov8n,minilm,silero-vad,crepe-full]

Per model (benchmarks/zoo_lib): deployc builds the zoo config with targets onnx [fp32, int8] and tensorrt [int8] and
nothing else changed (remedies on, as by default). The peers quantize deployc's onnx/fp32 artifact (the model as
loaded, exported or simplified; outputs equal within fp32 rounding) with the first `quantize.samples` calibration
samples deployc used, through benchmarks/peers (each in its own venv):
- onnxruntime `quantize_static` with library defaults (a CPU artifact),
- NVIDIA Model Optimizer ONNX PTQ with its defaults (a TensorRT artifact: rest in fp16), and with
  high_precision_dtype=fp32.
Every graph is scored here with the zoo's metric on the validation set: CPU artifacts (deployc onnx/int8,
quantize_static) with onnxruntime's CPU kernels as users run them; TensorRT artifacts (deployc tensorrt/int8,
Model Optimizer) with their Q/DQ run as written (deployc's proxy: no TensorRT here). Latency ratio to fp32 (batch 1,
deployc.core.timing's interleaved rounds, thread CPU clock) only for the CPU artifacts: a proxy's latency says nothing
about a GPU. Verdict per model: deployc's best int8 drift against the best peer's.
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
sys.path.insert(0, str(HERE / "peers"))

MODELS = "paddleocr-cls,yolov8n,minilm,silero-vad,crepe-full"
PEERS = (  # (label, tool, options, kind)
    ("onnxruntime quantize_static (defaults)", "ort", {}, "cpu"),
    ("Model Optimizer ONNX PTQ (defaults: rest fp16)", "modelopt", {}, "tensorrt"),
    ("Model Optimizer ONNX PTQ (rest fp32)", "modelopt", {"high_precision_dtype": "fp32"}, "tensorrt"),
)


def deployc_build(name: str, out: Path) -> tuple[object, dict[str, dict], Path]:
    """The zoo config of `name` built by deployc (onnx fp32 + int8, tensorrt int8); artifacts by label."""
    import yaml
    import zoo
    from zoo_lib import catalog, fetch

    from deployc.core.config import load_config
    from deployc.driver.build import build

    config_path = zoo.prepare(catalog.BY_NAME[name], out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    raw["targets"] = {"onnx": {"precision": ["fp32", "int8"]}, "tensorrt": {"precision": ["int8"]}}
    config = load_config(raw, base_dir=config_path.parent)
    result = build(config, out=config_path.parent / "build-peers", quiet=True)
    arts = {
        f"{a['target']}/{a['precision']}": {**a, "file": result.out_dir / a["path"] if a.get("path") else None}
        for a in result.manifest["artifacts"]
    }
    return config, arts, config_path.parent


def calibration_npz(folder: Path, samples: int) -> Path:
    """The first `samples` calibration samples (deployc's quantize.samples), named after the model inputs."""
    with np.load(folder / "data.npz") as npz:
        calib = {k.removeprefix("calib_"): v[:samples] for k, v in npz.items() if k.startswith("calib_")}
        if not calib:  # no separate calibration arrays: deployc calibrates on the validation inputs
            calib = {k: v[:samples] for k, v in npz.items() if k != "labels"}
    np.savez(folder / "calib.npz", **calib)
    return folder / "calib.npz"


def peer_graph(tool: str, options: dict, fp32: Path, calib: Path, out: Path) -> Path | str:
    from peers import PeerError, available_peers, quantize_with_peer

    reason = available_peers().get(tool)
    if reason:
        return reason
    try:
        with open(out.with_suffix(".log"), "w") as log:
            quantize_with_peer(tool, fp32, calib, out, options=options, log=log)
    except PeerError as exc:
        return str(exc)
    return out


def cpu_latency(scorer, graphs: dict[str, Path]) -> dict[str, float]:
    """Batch-1 latency / fp32's of each CPU graph, within interleaved rounds on one thread."""
    from deployc.core.ort import session
    from deployc.core.timing import interleaved

    one = {k: v[:1] for k, v in scorer.inputs.items()}
    runs = {who: (lambda s=session(path, threads=1): s.run(None, one)) for who, path in graphs.items()}
    rounds = interleaved(runs, rounds=8, per_round=5, clock="thread_cpu")
    return {who: rounds.ratio(who, "fp32").median for who in graphs}


def main(argv: list[str] | None = None) -> int:
    from tensorrt_placement import Scorer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="peers-int8-")))
    args = ap.parse_args(argv)
    os.environ.setdefault("DEPLOYC_CACHE_DIR", str(args.out / "pass-cache"))

    rows, verdicts = [], []
    for name in args.models.split(","):
        config, arts, folder = deployc_build(name, args.out)
        fp32 = arts["onnx/fp32"]["file"]
        scorer = Scorer(config, folder / "data.npz", fp32, config.data.batch_size)
        calib = calibration_npz(folder, config.quantize.samples)
        model_rows = [{**scorer.row("fp32", "—", fp32, as_written=False), "kind": "cpu", "file": fp32}]
        for label, kind in (("onnx/int8", "cpu"), ("tensorrt/int8", "tensorrt")):
            art = arts.get(label)
            if art is None or art["file"] is None:
                print(f"{name}: deployc {label} not built: {art and art['gate'].get('reason')}", file=sys.stderr)
                continue
            trials = len(((art.get("details") or {}).get("remedies") or {}).get("trial_log") or []) or 1
            row = scorer.row(f"deployc {label}", "—", art["file"], art["gate"]["status"], as_written=kind != "cpu")
            model_rows.append({**row, "kind": kind, "file": art["file"], "trials": trials})
        for label, tool, options, kind in PEERS:
            out = folder / f"{tool}{'-' + '-'.join(options) if options else ''}.int8.onnx"
            graph = peer_graph(tool, options, fp32, calib, out)
            if isinstance(graph, str):
                print(f"{name}: {label} did not run: {graph}", file=sys.stderr)
                model_rows.append({"model": name, "who": label, "error": graph.splitlines()[0][:120]})
                continue
            row = scorer.row(label, "—", graph, as_written=kind != "cpu")
            model_rows.append({**row, "kind": kind, "file": graph})
        built = [r for r in model_rows if "error" not in r]
        ratios = cpu_latency(scorer, {("fp32" if r["who"] == "fp32" else r["who"]): r["file"] for r in built
                                      if r["kind"] == "cpu"})  # fmt: skip
        for r in built:
            r["bytes"] = Path(r["file"]).stat().st_size
            r["latency"] = ratios.get(r["who"])
        ours = [r for r in built if r["who"].startswith("deployc")]
        peers = [r for r in built if r["who"] not in ("fp32",) and not r["who"].startswith("deployc")]
        if ours and peers:
            mine, theirs = min(ours, key=lambda r: r["drift"]), min(peers, key=lambda r: r["drift"])
            verdict = "at least as accurate" if mine["drift"] <= theirs["drift"] + 1e-9 else "LESS accurate"
            verdicts.append(
                f"{name}: deployc's best {mine['who']} drift {mine['drift']:+.4f} vs best peer {theirs['who']} "
                f"{theirs['drift']:+.4f}: {verdict}"
            )
        rows += model_rows
        print(f"[peers] {name} done", file=sys.stderr, flush=True)

    fp32_bytes = {r["model"]: r["bytes"] for r in rows if r.get("who") == "fp32"}
    print(
        "| model | quantizer | Q | DQ | metric | drift vs fp32 | size vs fp32 | latency vs fp32 (CPU) | deployc gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['who']} | — | — | — | failed: {r['error']} | — | — | — |")
            continue
        latency = f"{r['latency']:.2f}×" if r.get("latency") is not None else "— (TensorRT graph)"
        gate = f"{r['gate']} ({r['trials']} trial{'s' if r['trials'] > 1 else ''})" if "trials" in r else r["gate"]
        print(
            f"| {r['model']} | {r['who']} | {r['q']} | {r['dq']} | {r['value']:.4f} | {r['drift']:+.4f} | "
            f"{r['bytes'] / fp32_bytes[r['model']]:.2f}× | {latency} | {gate} |"
        )
    print("\n" + "\n".join(verdicts))
    print(f"\nfiles: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
