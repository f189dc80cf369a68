"""YOLOv8n (real weights: NudeNet's 320n.onnx, Ultralytics 8.2.46, from the `nudenet` wheel) at 320×320, batch 1:
deployc's onnx int8 artifact against its onnx fp32 artifact, timed in interleaved rounds in one process.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache .venv/bin/python benchmarks/yolov8n_int8.py     # goal int8/fp32 ≤ 0.45×
    ... benchmarks/yolov8n_int8.py --clock wall --threads 2                             # wall time, 2 threads

Builds the zoo's config (benchmarks/zoo_lib: real photos, letterboxed; the task metric compares detections
with the original model's) twice: tuned for this CPU (targets.onnx.cpu: auto) and without CPU tuning
(cpu: portable), so the table shows what the tuning buys; both int8 graphs give the same outputs. Prints
the gates, the table, and onnxruntime's per-op profile of fp32 vs int8.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--clock", choices=["thread_cpu", "wall"], default="thread_cpu")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="yolov8n-")))
    args = ap.parse_args(argv)
    if args.clock == "thread_cpu" and args.threads != 1:
        ap.error("--clock thread_cpu counts the calling thread only: use --threads 1")

    import yaml
    import zoo
    from perf_lib import conv_macs, op_profile, ort_runner, profile_table, time_table
    from zoo_lib import catalog, fetch

    from deployc.core.config import load_config
    from deployc.core.ort import session
    from deployc.driver.build import build

    os.environ.setdefault("DEPLOYC_CACHE_DIR", str(args.out / "pass-cache"))  # fresh: the tuned build pays in full
    config_path = zoo.prepare(catalog.BY_NAME["yolov8n"], args.out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    builds = {}
    for cpu in ("auto", "portable"):
        raw["targets"] = {"onnx": {"precision": ["fp32", "int8"], "cpu": cpu, "threads": args.threads}}
        config = load_config(raw, base_dir=config_path.parent)
        builds[cpu] = build(config, out=args.out / f"build-{cpu}", quiet=True)
    arts = {cpu: {a["precision"]: a for a in b.manifest["artifacts"]} for cpu, b in builds.items()}
    paths = {cpu: {p: args.out / f"build-{cpu}" / a["path"] for p, a in by.items()} for cpu, by in arts.items()}

    x = np.load(config_path.parent / "data.npz")["images"][:1]
    feed = {"images": x}
    same = [
        float(np.abs(a - b).max())
        for a, b in zip(
            session(paths["auto"]["int8"]).run(None, feed), session(paths["portable"]["int8"]).run(None, feed)
        )
    ]
    cands = {
        "onnx fp32": ort_runner(paths["auto"]["fp32"], feed, args.threads),
        "onnx int8 (cpu: portable)": ort_runner(paths["portable"]["int8"], feed, args.threads),
        "onnx int8 (cpu: auto)": ort_runner(paths["auto"]["int8"], feed, args.threads),
    }
    sizes = {
        "onnx fp32": arts["auto"]["fp32"]["bytes"],
        "onnx int8 (cpu: portable)": arts["portable"]["int8"]["bytes"],
        "onnx int8 (cpu: auto)": arts["auto"]["int8"]["bytes"],
    }
    rounds, table = time_table(cands, "onnx fp32", args.clock, args.rounds, args.per_round, sizes)
    ratio = rounds.ratio("onnx int8 (cpu: auto)", "onnx fp32")
    print(f"YOLOv8n (NudeNet 320n.onnx), batch 1, 3×320×320, {args.threads} thread(s), clock {args.clock}\n")
    for cpu, by in arts.items():
        for p, a in by.items():
            m = a.get("metrics") or {}
            print(f"- {p} (cpu: {cpu}): gate {a['gate']['status']} — {a['gate']['reason']}; metric {m.get('metric')}")
    tuned = next(p for p in arts["auto"]["int8"]["passes"] if p["name"] == "cpu.int8")["metrics"]
    print(f"- cpu.int8 (auto): {tuned}; int8 outputs tuned vs portable: max abs difference {max(same)}\n")
    print(table)
    verdict = "met" if ratio.median <= 0.45 else "NOT met"
    print(f"\nint8 / fp32 = {ratio.median:.3f}× (IQR {ratio.iqr:.3f}); goal ≤ 0.45×: {verdict}")
    profiles = {
        "fp32": op_profile(paths["auto"]["fp32"], feed),
        "int8 portable": op_profile(paths["portable"]["int8"], feed),
        "int8 auto": op_profile(paths["auto"]["int8"], feed),
    }
    print("\nonnxruntime profile, 1 thread, fastest kernel ms per node summed by op type:\n")
    print(profile_table(profiles, top=14))
    macs = conv_macs(paths["auto"]["fp32"], feed)
    print(
        f"\nconvolutions: {macs / 1e9:.2f} GMAC; int8 {macs / profiles['int8 auto']['QLinearConv'] / 1e6:.0f} GMAC/s, "
        f"fp32 {macs / profiles['fp32']['Conv'] / 1e6:.0f} GMAC/s"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
