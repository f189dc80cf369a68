"""ResNet-18 (ImageNet-shaped, batch 1, 224×224) on this CPU, in ONE process, candidates timed in interleaved rounds:
torch eager fp32, onnxruntime on deployc's fp32 artifact, deployc's int8 artifact (built by `deployc.driver.build`,
tuned for this CPU), and a plain `onnxruntime.quantization.quantize_static` of a plain export.

    .venv/bin/python benchmarks/resnet18_cpu.py                          # int8 / eager, goal ≤ 0.15×
    .venv/bin/python benchmarks/resnet18_cpu.py --prune 0.5              # structured 50% + int8 / eager, goal ≤ 0.08×
    .venv/bin/python benchmarks/resnet18_cpu.py --clock wall --threads 2 # wall time, 2 threads (noisy when busy)

Default clock: CPU time of the calling thread with one thread everywhere (torch and onnxruntime then compute on
that thread), which a busy shared machine barely disturbs; `--clock wall` measures latency as users see it.
Weights are random and the data random normal images (no hub downloads here): latency does not depend on
either. With --prune the int8 artifact is of the pruned model (not fine-tuned, so its accuracy gate is off);
eager stays the unpruned model, as in the issue's table. Prints the table, the goal, and onnxruntime's
per-op profile of fp32 vs int8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def config(prune: float | None) -> dict:
    """three_target_build.py's ResNet-18 config, onnx only; with `prune`, structured pruning first."""
    from three_target_build import config as three_target_config

    raw = three_target_config({"onnx": {"precision": ["fp32", "int8"]}})
    raw["passes"] = [{"prune.structured": {"ratio": prune, "measure_onnx": False}}] if prune else []
    raw["validate"] = {"max_drift": 1.0 if prune else 0.02, "latency_runs": 5}
    return raw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prune", type=float, help="prune.structured ratio before int8 (e.g. 0.5)")
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--clock", choices=["thread_cpu", "wall"], default="thread_cpu")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="resnet18-")))
    args = ap.parse_args(argv)
    if args.clock == "thread_cpu" and args.threads != 1:
        ap.error("--clock thread_cpu counts the calling thread only: use --threads 1")

    import onnx
    import torch
    from onnxruntime.quantization import quantize_static
    from perf_lib import conv_macs, int8_conv_peak_gmacs, op_profile, ort_runner, profile_table, time_table
    from three_target_build import calibration_images

    from deployc.core.config import load_config
    from deployc.core.ort import CalibrationReader
    from deployc.core.state import ModelState, TensorSpec
    from deployc.driver.build import build
    from deployc.examples.models import ResNet18
    from deployc.passes.export import export_onnx

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = build(load_config(config(args.prune), base_dir=HERE), out=args.out / "build", quiet=True, cache=False)
    build_s = time.perf_counter() - t0
    arts = {a["precision"]: a for a in result.manifest["artifacts"]}
    paths = {p: args.out / "build" / a["path"] for p, a in arts.items()}

    torch.manual_seed(0)
    model = ResNet18().eval()  # random weights, like the build's: latency does not depend on them
    state = ModelState(module=model, inputs=(TensorSpec("image", ("batch", 3, 224, 224)),), facts=frozenset({"torch"}))
    plain, plain_int8 = args.out / "plain.fp32.onnx", args.out / "plain.int8.onnx"
    onnx.save(export_onnx(model, state), plain)
    calib = [x for x, _ in calibration_images()]
    from deployc.data.dataset import Dataset

    calib_ds = Dataset({"image": np.concatenate([c["image"] for c in calib])}, None, "random")
    quantize_static(str(plain), str(plain_int8), CalibrationReader(calib_ds, 16))  # library defaults

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            model(xt)

    feed = {"image": x}
    int8_name = "deployc onnx int8" + (f" (pruned {args.prune:.0%})" if args.prune else "")
    cands = {
        "torch eager fp32": eager,
        "onnxruntime fp32 (deployc artifact)": ort_runner(paths["fp32"], feed, args.threads),
        "plain quantize_static int8": ort_runner(plain_int8, feed, args.threads),
        int8_name: ort_runner(paths["int8"], feed, args.threads),
    }
    sizes = {
        "onnxruntime fp32 (deployc artifact)": arts["fp32"]["bytes"],
        "plain quantize_static int8": plain_int8.stat().st_size,
        int8_name: arts["int8"]["bytes"],
    }
    rounds, table = time_table(cands, "torch eager fp32", args.clock, args.rounds, args.per_round, sizes)
    goal = 0.08 if args.prune else 0.15
    ratio = rounds.ratio(int8_name, "torch eager fp32")
    print(
        f"ResNet-18, batch 1, 3×224×224, {args.threads} thread(s), clock {args.clock} (torch {torch.__version__}); "
        f"deployc build {build_s:.0f} s, int8 gate: {arts['int8']['gate']['status']}"
        + (" (accuracy gate off: pruned without fine-tuning)" if args.prune else "")
        + "\n"
    )
    print(table)
    verdict = "met" if ratio.median <= goal else "NOT met"
    print(f"\n{int8_name} / torch eager = {ratio.median:.3f}× (IQR {ratio.iqr:.3f}); goal ≤ {goal}×: {verdict}")
    tuned = next(p for p in arts["int8"]["passes"] if p["name"] == "cpu.int8")["metrics"]
    print(f"cpu.int8: {tuned}; tuned for {result.timings['artifacts']['onnx/int8'].get('int8_tuned_for')}")
    profiles = {k: op_profile(paths[k], feed, threads=1) for k in ("fp32", "int8")}
    print("\nonnxruntime profile, 1 thread, fastest kernel ms per node summed by op type:\n")
    print(profile_table(profiles))
    macs, peak = conv_macs(paths["fp32"], feed), int8_conv_peak_gmacs()
    conv_ms = profiles["int8"].get("QLinearConv", float("nan"))
    eager_ms = rounds.times["torch eager fp32"].median
    floor = (  # the profile is one thread's CPU time: a ratio to eager only when eager was timed that way too
        f" = {macs / peak / 1e6 / eager_ms:.3f}× eager's {eager_ms:.2f} ms"
        if args.clock == "thread_cpu"  # which the argument check restricts to --threads 1
        else " on one thread (eager here was timed on the wall clock: no ratio)"
    )
    print(
        f"\nint8 convolutions: {macs / 1e9:.2f} GMAC in {conv_ms:.2f} ms = {macs / conv_ms / 1e6:.0f} GMAC/s; "
        f"onnxruntime's best int8 conv on this CPU (3×3, 256→256, 28×28): {peak:.0f} GMAC/s. "
        f"At that rate the convolutions alone take {macs / peak / 1e6:.2f} ms{floor}."
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
