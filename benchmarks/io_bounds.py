"""What hostile inputs cost before deployc refuses or finishes (issue 23): peak memory and wall time of one CLI run.

    nice -n 10 .venv/bin/python benchmarks/io_bounds.py --work /tmp/io [--deployc PATH/TO/deployc] [--timeout 120]

Cases (each a fresh `deployc` process; peak RSS from wait4's rusage):
  npz_unused_3gib  validate-config; data.npz holds x (64×8 float32), labels and an unused 3 GiB uint8 array
  weights_1tb      build; model.weights is a 1 TB sparse file (the no-op check hashes inputs before anything)
  config_30gb      validate-config on a 30 GB sparse config file
Run it with the deployc of another checkout (--deployc) for the before figures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Linear(8, 5)\n"


def config(folder: Path, **model: str) -> Path:
    cfg = {
        "name": "io",
        "model": {"factory": "model.py:make", "inputs": [{"name": "x", "shape": ["batch", 8]}], **model},
        "data": {"validation": "data.npz", "metric": "top1"},
        "targets": {"onnx": {"precision": ["fp32"]}},
    }
    path = folder / "c.yaml"
    path.write_text(json.dumps(cfg))
    return path


def setup(work: Path) -> dict[str, list[str]]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "model.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    if not (work / "data.npz").exists():
        np.savez(
            work / "data.npz",
            x=rng.standard_normal((64, 8)).astype(np.float32),
            labels=rng.integers(0, 5, 64),
            unused=np.zeros(3 << 30, np.uint8),  # calloc'd: written to disk, never resident here
        )
    for name, size in (("w.safetensors", 1 << 40), ("big.yaml", 30 << 30)):
        with open(work / name, "wb") as f:
            f.truncate(size)
    cfg = config(work)
    weights = work / "weights"
    weights.mkdir(exist_ok=True)
    (weights / "model.py").write_text(MODEL)
    np.savez(weights / "data.npz", x=rng.standard_normal((64, 8)).astype(np.float32), labels=rng.integers(0, 5, 64))
    wcfg = config(weights, weights=str(work / "w.safetensors"))
    return {
        "npz_unused_3gib": ["validate-config", str(cfg)],
        "weights_1tb": ["build", str(wcfg), "--out", str(work / "out")],
        "config_30gb": ["validate-config", str(work / "big.yaml")],
    }


def run(deployc: str, argv: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([deployc, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return {"seconds": f">{timeout:.0f} (killed)", "peak_mb": round(usage.ru_maxrss / 1024), "exit": None}
        time.sleep(0.05)
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_mb": round(usage.ru_maxrss / 1024),
        "exit": os.waitstatus_to_exitcode(status),
        "message": (err[-1] if err else "")[:160],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--deployc", default=str(Path(sys.executable).with_name("deployc")))
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    for name, argv in setup(args.work).items():
        print(json.dumps({"case": name, **run(args.deployc, argv, args.timeout)}), flush=True)


if __name__ == "__main__":
    main()
