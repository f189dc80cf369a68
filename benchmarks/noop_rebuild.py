"""Wall time of a no-op rebuild through the CLI: `deployc build CONFIG --out DIR` a second time with nothing changed
(goal ≤ 1.0 s), for the embedded demo (digits CNN, onnx fp32 + int8) and for ResNet-18 (onnx + tensorrt).

    .venv/bin/python benchmarks/noop_rebuild.py [--repeat 7] [--out /tmp/deployc-noop]

Each config is built once (a full build, its own fresh pass cache), then rebuilt --repeat times as separate
processes, exactly as a user or CI job would run it; the script checks each rebuild said "up to date", exited
0 and left every file of the out dir untouched, and prints the median and IQR of the wall times. A last run
with --no-cache shows the full build path still runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def deployc() -> list[str]:
    script = Path(sys.executable).with_name("deployc")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deployc.cli"]


def stamps(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def resnet18_config(folder: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from resnet18_cpu import config

    raw = config(None)
    raw["data"] = {k: str(HERE / v) if str(v).endswith("_images") else v for k, v in raw["data"].items()}
    raw["targets"] = {"onnx": {"precision": ["fp32", "int8"]}, "tensorrt": {"precision": ["fp32"]}}
    path = folder / "resnet18.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def measure(name: str, config: Path, out: Path, repeat: int, env: dict[str, str]) -> None:
    cmd = [*deployc(), "build", str(config), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--quiet"], check=False, env=env, cwd=out.parent)
    first = time.perf_counter() - t0
    before = stamps(out)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
        times.append(time.perf_counter() - t0)
        if run.returncode != 0 or "up to date" not in run.stderr:
            raise SystemExit(f"{name}: rebuild was not a no-op (exit {run.returncode}): {run.stderr[-500:]}")
    if stamps(out) != before:
        raise SystemExit(f"{name}: a no-op rebuild changed files in {out}")
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    print(
        f"| {name} | {first:.1f} | {statistics.median(times):.2f} | {q3 - q1:.2f} | {min(times):.2f} | "
        f"{max(times):.2f} | {os.getloadavg()[0]:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="deployc-noop-")))
    ap.add_argument("--skip-resnet", action="store_true", help="only the demo (the ResNet-18 first build is slow)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEPLOYC_CACHE_DIR=str(args.out / "pass-cache"), OMP_NUM_THREADS="1")
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.yaml"
    print(f"command: deployc build CONFIG --out DIR (run again with nothing changed); {os.cpu_count()} cores\n")
    print("| config | first build s | no-op median s | IQR s | min s | max s | load average |")
    print("|---|---|---|---|---|---|---|")
    measure("demo (digits CNN, onnx fp32+int8)", demo, args.out / "demo", args.repeat, env)
    if not args.skip_resnet:
        config = resnet18_config(args.out)
        measure("ResNet-18 (onnx fp32+int8, tensorrt fp32)", config, args.out / "resnet18", args.repeat, env)
    run = subprocess.run(
        [*deployc(), "build", str(demo), "--out", str(args.out / "demo"), "--no-cache", "--quiet"], env=env
    )
    print(f"\n--no-cache: full build, exit {run.returncode} (goal for every no-op row: ≤ 1.0 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
