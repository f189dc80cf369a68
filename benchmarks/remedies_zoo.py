"""Accuracy remedies on real zoo models: drift of the int8 artifact as configured (trial 1) and as shipped after
the remedy loop, trials used, and the loop's wall time, per model × target.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache .venv/bin/python benchmarks/remedies_zoo.py --out /tmp/remedies-zoo \
        [--models paddleocr-cls,silero-vad,crepe-full,yolov8n] [--max-trials 8]

Each model's zoo config (benchmarks/zoo.py prepares data and weights) is built once with its int8 targets and the
default quantize.remedies; writes OUT/remedies.md and OUT/remedies.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import deployc_command, prepare
from zoo_lib import catalog, fetch

# int8 targets that apply: tflite lowers from torch only, so ONNX-sourced models have no tflite artifact
TARGETS = {
    "paddleocr-cls": ["onnx", "tensorrt"],
    "silero-vad": ["onnx", "tflite", "tensorrt"],
    "crepe-full": ["tensorrt"],
    "yolov8n": ["onnx", "tensorrt"],
}


def run(name: str, out: Path, cache: Path, max_trials: int, timeout: int) -> list[dict]:
    model = catalog.BY_NAME[name]
    config_path = prepare(model, out, cache)
    config = yaml.safe_load(config_path.read_text())
    config["targets"] = {t: {"precision": ["int8"]} for t in TARGETS[name]}
    config.setdefault("quantize", {})["remedies"] = {"max_trials": max_trials}
    config.setdefault("validate", {})["latency_runs"] = 3
    path = config_path.with_name("remedies.yaml")
    path.write_text(yaml.safe_dump(config, sort_keys=False, width=120))
    build_dir = config_path.parent / "remedies-build"
    cmd = deployc_command() + ["build", str(path), "--out", str(build_dir), "--no-cache", "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=config_path.parent)
    (config_path.parent / "remedies-build.log").write_text(proc.stderr)
    if not (build_dir / "manifest.json").is_file():
        return [{"model": name, "target": "-", "error": proc.stderr.strip().splitlines()[-1:], "exit": proc.returncode}]
    manifest = json.loads((build_dir / "manifest.json").read_text())
    timings = json.loads((build_dir / "timings.json").read_text())
    rows = []
    for art in manifest["artifacts"]:
        label = f"{art['target']}/{art['precision']}"
        remedies = (art.get("details") or {}).get("remedies")
        record = next((p for p in timings["artifact_passes"].get(label, []) if p["name"] == "remedies"), None)
        drift = (art.get("metrics") or {}).get("drift")
        rows.append(
            {
                "model": name,
                "target": label,
                "metric": manifest["budget"]["drift_units"],
                "budget": manifest["budget"]["max_drift"],
                "drift_before": remedies["trial_log"][0]["drift"] if remedies else drift,
                "drift_after": drift,
                "trials": remedies["trials"] if remedies else 1,
                "shipped": (
                    f"{remedies['trial_log'][remedies['chosen_trial'] - 1]['stage']}: "
                    f"{remedies['trial_log'][remedies['chosen_trial'] - 1]['change']}"
                    if remedies
                    else "as configured"
                ),
                "gate": art["gate"]["status"],
                "loop_seconds": record["seconds"] if record else 0.0,
                "build_seconds": round(time.perf_counter() - t0, 1),
                "trial_log": remedies["trial_log"] if remedies else [],
            }
        )
    return rows


def _fmt(key: str, v: object) -> str:
    if v is None:
        return "n/a"
    if key.startswith("drift") and isinstance(v, float):
        return f"{v:+.4f}"
    return f"{v:.1f}" if key == "loop_seconds" else str(v).rsplit(":", 1)[-1] if key == "metric" else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TARGETS))
    parser.add_argument("--out", default="remedies-zoo")
    parser.add_argument("--cache", help="wheel cache (default $DEPLOYC_ZOO_CACHE)")
    parser.add_argument("--max-trials", type=int, default=8)
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args(argv)
    out, cache = Path(args.out).resolve(), fetch.cache_dir(args.cache)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "remedies.json").read_text()) if (out / "remedies.json").is_file() else []
    for name in args.models.split(","):
        print(f"[remedies] {name}", file=sys.stderr, flush=True)
        results = [r for r in results if r["model"] != name] + run(name, out, cache, args.max_trials, args.timeout)
        (out / "remedies.json").write_text(json.dumps(results, indent=2))
    header = "| model | artifact | metric | budget | drift before | drift after | trials | shipped | gate | loop s |"
    lines = [header, "|" + "---|" * 10]
    for r in results:
        lines.append(
            "| "
            + " | ".join(
                _fmt(k, r.get(k))
                for k in (
                    "model",
                    "target",
                    "metric",
                    "budget",
                    "drift_before",
                    "drift_after",
                    "trials",
                    "shipped",
                    "gate",
                    "loop_seconds",
                )
            )
            + " |"
        )
    (out / "remedies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
