"""Peak RSS of validating a TFLite artifact under a memory budget (issue 25): before, a .tflite file had no
activation estimate and ran at the requested batch whatever build.max_memory said; now its bytes a sample come from
the flatbuffer's tensors and the batches go through the same memory.Guard as ONNX artifacts'.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache .venv/bin/python benchmarks/tflite_validation_memory.py \
        [--model crepe-full] [--out DIR] [--budgets 64MB,16MB,2MB] [--batch 64]

Builds the zoo model's tflite fp32 artifact once (deployc, this tree, default budget), then validates it in a fresh
subprocess per row, so each row's peak RSS is that child's own (ru_maxrss of os.wait4): "requested batch" runs the
interpreter over the validation set at --batch, as the tflite path did before; "budgeted" sizes the batches with
gate.inference_batches under each budget. A row reports the batches run, the outputs' max difference from the
requested-batch run (0: batch sizes do not change results), and the error a budget below one sample gives.
The zoo's dnsmos and doc-orientation are ONNX files (tflite lowers from torch), so the default is the largest torch
model of the zoo with a tflite build, CREPE full.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import deployc_command, prepare
from zoo_lib import catalog, fetch

VALIDATE = """
import json, sys, time
from pathlib import Path
import numpy as np
from deployc.compiler.contracts import Artifact
from deployc.core import memory
from deployc.data.dataset import Dataset
from deployc.data.reference import run_batched
from deployc.targets.tflite import TfliteOptions, TfliteTarget
from deployc.targets.tflite_flatbuffer import activations
from deployc.validation.gate import inference_batches
out, data_path, budget, wanted, save = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
entry = next(a for a in json.loads((Path(out) / "manifest.json").read_text())["artifacts"] if a["target"] == "tflite")
path = Path(out) / entry["path"]
art = Artifact("tflite", entry["precision"], path, entry["runtime"], "", inputs=entry["inputs"], outputs=entry["outputs"])
arrays = np.load(data_path)
data = Dataset({e["name"]: arrays[e["name"]] for e in entry["inputs"]}, None, "zoo")
target = TfliteTarget(TfliteOptions())
row = {"estimate_per_sample_bytes": activations(path).peak}
t0, cpu0 = time.perf_counter(), time.process_time()
try:
    if budget == "none":
        batches = wanted
        outputs = run_batched(lambda x: target.infer(art, x), data, wanted)
        row["batches"] = -(-len(data) // wanted)
    else:
        with memory.applied(memory.Budget(memory.parse_size(budget), "build.max_memory")):
            guard = inference_batches(target, art, data, wanted)
            outputs = run_batched(lambda x: target.infer(art, x), data, guard)
        row["batch_sizes"] = sorted(set(guard.sizes))
        row["batches"] = len(guard.sizes)
    np.savez(save, *outputs)
except memory.MemoryBudgetExceeded as exc:
    row["error"] = str(exc)
row["seconds"], row["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - cpu0
print(json.dumps(row))
"""


def build_tflite(name: str, out: Path, cache: Path) -> tuple[Path, Path]:
    """The model's tflite fp32 artifact built by deployc with its default budget; (build out dir, data.npz)."""
    config_path = prepare(catalog.BY_NAME[name], out, cache)
    config = yaml.safe_load(config_path.read_text())
    config["targets"] = {"tflite": {"precision": ["fp32"]}}
    config["validate"]["latency_runs"] = 1
    tflite_config = config_path.with_name("tflite-fp32.yaml")
    tflite_config.write_text(yaml.safe_dump(config, sort_keys=False))
    build_out = config_path.parent / "build-tflite"
    if not (build_out / "manifest.json").is_file():
        cmd = [*deployc_command(), "build", str(tflite_config), "--out", str(build_out), "--quiet"]
        done = subprocess.run(cmd, cwd=config_path.parent, capture_output=True, text=True)
        if not (build_out / "manifest.json").is_file():
            raise SystemExit(f"build failed ({done.returncode}): {done.stderr[-2000:]}")
    return build_out, config_path.parent / "data.npz"


def validate(build_out: Path, data: Path, budget: str, batch: int, save: Path) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", VALIDATE, str(build_out), str(data), budget, str(batch), str(save)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    assert proc.stdout is not None
    lines = proc.stdout.read().strip().splitlines()
    row = json.loads(lines[-1]) if lines else {"failed": os.waitstatus_to_exitcode(status)}
    row.update(
        budget=budget if budget != "none" else f"none (requested batch {batch})",
        peak_rss_mb=round(usage.ru_maxrss / 1024),
        child_wall_seconds=round(time.perf_counter() - t0, 1),
        child_cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1),
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="crepe-full")
    parser.add_argument("--out", type=Path, default=Path("/tmp/deployc-tflite-memory"))
    parser.add_argument("--budgets", default="256MB,32MB,8MB,1MB")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    cache = fetch.cache_dir()
    build_out, data = build_tflite(args.model, args.out, cache)
    rows = []
    reference = args.out / "outputs-requested.npz"
    for budget in ["none", *args.budgets.split(",")]:
        save = reference if budget == "none" else args.out / f"outputs-{budget}.npz"
        row = validate(build_out, data, budget, args.batch, save)
        if budget != "none" and "error" not in row and save.is_file():
            with np.load(reference) as a, np.load(save) as b:
                row["max_abs_diff_from_requested_batch"] = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "tflite_validation_memory.json").write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
