"""Wall time of a full three-target build (onnx + tflite + tensorrt) of ResNet-18, no fine-tuning.

    .venv/bin/python benchmarks/three_target_build.py [--out /tmp/resnet18-3t] [--bench]

Goal: ≤ 20 s on the 2-core CPU (issue 14). ResNet-18 (3×224×224, random weights: no hub downloads here) is
built from one config; validation and calibration are different draws of random normal images, the
metric is cosine similarity to the model as loaded. Targets that are not registered yet are left
out and named in the output. --bench then runs `deployc bench` on the build (ratios to eager,
to plain quantize_static).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WANTED = {
    "onnx": {"precision": ["fp32", "int8"]},
    "tflite": {"precision": ["fp32", "int8"]},
    "tensorrt": {"precision": ["fp32", "int8"]},
}


def _images(n: int, seed: int) -> list[tuple[dict[str, np.ndarray], None]]:
    x = np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(np.float32)
    return [({"image": x[i : i + 1]}, None) for i in range(n)]


def validation_images() -> list[tuple[dict[str, np.ndarray], None]]:
    return _images(32, seed=1)


def calibration_images() -> list[tuple[dict[str, np.ndarray], None]]:
    return _images(64, seed=2)


def config(targets: dict[str, dict]) -> dict:
    """The build config; data factories resolve against this folder (pass base_dir=HERE)."""
    return {
        "name": "resnet18",
        "model": {
            "factory": "deployc.examples.models:ResNet18",
            "inputs": [{"name": "image", "shape": ["batch", 3, 224, 224]}],
        },
        "data": {
            "validation": "three_target_build.py:validation_images",
            "calibration": "three_target_build.py:calibration_images",
            "metric": "cosine",
            "batch_size": 16,
        },
        "quantize": {"per_channel": True, "calibration": "minmax", "samples": 64},
        "targets": targets,
        "validate": {"max_drift": 0.02, "latency_runs": 20},
    }


def registered(wanted: dict[str, dict]) -> tuple[dict[str, dict], list[str]]:
    from deployc.compiler.registry import target_names

    names = set(target_names())
    return {k: v for k, v in wanted.items() if k in names}, [k for k in wanted if k not in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/deployc-resnet18-3t"))
    ap.add_argument("--bench", action="store_true", help="run deployc bench on the build afterwards")
    ap.add_argument("--runs", type=int, default=50, help="bench: timed batch-1 runs per candidate")
    ap.add_argument(
        "--cache",
        choices=["cold", "off"],
        default="cold",
        help="cold: the pass cache on, in a fresh empty folder (targets may reuse each other's passes "
        "within this build, as a first build would); off: every pass runs",
    )
    args = ap.parse_args(argv)
    t_import = time.perf_counter()
    from deployc.core.config import load_config
    from deployc.driver.build import build
    from deployc.outputs.report import report_view

    targets, missing = registered(WANTED)
    cfg = load_config(config(targets), base_dir=HERE)
    if args.cache == "cold":
        os.environ["DEPLOYC_CACHE_DIR"] = tempfile.mkdtemp(prefix="deployc-cold-cache-")
    load = os.getloadavg()[0]  # other work on the machine stretches wall time; say how busy it was
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = build(cfg, out=args.out, cache=args.cache == "cold")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    view = report_view(result.manifest, result.timings) if result.timings else result.manifest
    print(
        f"\nthree-target build of ResNet-18 (pass cache {args.cache}): {seconds:.1f} s wall in build() "
        f"(+{t0 - t_import:.1f} s importing deployc; {cpu:.1f} s CPU time; load average {load:.1f} at start); "
        f"goal ≤ 20 s: {'met' if seconds <= 20 else 'NOT met'}; pass cache {result.timings['cache']}"
    )
    print(
        f"targets: {', '.join(targets)}" + (f"; not registered here, left out: {', '.join(missing)}" if missing else "")
    )
    print("| artifact | gate | cosine | batch-1 ms |\n|---|---|---|---|")
    for a in view["artifacts"]:
        m, perf = a.get("metrics") or {}, a.get("perf") or {}
        ms = perf.get("latency_ms_batch1")
        print(
            f"| {a['target']}/{a['precision']} | {(a.get('gate') or {}).get('status')} | "
            f"{m.get('metric', float('nan')):.4f} | {'—' if ms is None else f'{ms:.2f}'} |"
        )
    passes = (result.timings or {}).get("passes") or []
    if passes:
        print(
            "slowest steps: "
            + ", ".join(f"{p['name']} {p['seconds']:.1f}s" for p in sorted(passes, key=lambda p: -p["seconds"])[:6])
        )
    if args.bench:
        from deployc.commands.bench import run_bench

        bench = run_bench(
            result.out_dir, runs=args.runs, config=cfg
        )  # the config names code: bench never reads it from the build dir
        t = bench["table"]
        print(f"\n{t['title']}\n\n| " + " | ".join(t["header"]) + " |\n|" + "---|" * len(t["header"]))
        for row in t["rows"]:
            print("| " + " | ".join(str(c) for c in row) + " |")
    if args.cache == "cold":
        shutil.rmtree(os.environ["DEPLOYC_CACHE_DIR"], ignore_errors=True)
    return result.exit_code


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # run from anywhere: the repo root holds pipeline/, passes/, targets/
    sys.exit(main())
