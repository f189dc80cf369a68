"""Bias correction (quantize.bias_correction) before/after on real zoo models: the task metric and drift of the int8
artifacts of onnx and tensorrt with it off and on, everything else the zoo config's defaults (remedies on).

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache nice -n 10 .venv/bin/python benchmarks/bias_correction_zoo.py \\
        --out /tmp/bc-zoo [--models yolov8n,paddleocr-cls,crepe-tiny]

Each model is built twice in-process (onnx [fp32, int8] + tensorrt [int8]); the gate rows come from the manifests.
tensorrt int8 is scored as its Q/DQ graph on onnxruntime (no TensorRT here), as the build itself does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import prepare
from zoo_lib import catalog, fetch

from deployc.core.config import load_config
from deployc.driver.build import build


def artifacts(name: str, out: Path, correction: bool) -> dict[str, dict]:
    config_path = prepare(catalog.BY_NAME[name], out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    raw["targets"] = {"onnx": {"precision": ["fp32", "int8"]}, "tensorrt": {"precision": ["int8"]}}
    raw.setdefault("quantize", {})["bias_correction"] = correction
    config = load_config(raw, base_dir=config_path.parent)
    result = build(config, out=config_path.parent / f"build-bc-{'on' if correction else 'off'}", quiet=True)
    return {f"{a['target']}/{a['precision']}": a for a in result.manifest["artifacts"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov8n,paddleocr-cls,crepe-tiny")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print("| model | artifact | metric off → on | drift off → on | gate off → on |\n|---|---|---|---|---|")
    for name in args.models.split(","):
        off, on = artifacts(name, args.out, False), artifacts(name, args.out, True)
        for label in ("onnx/int8", "tensorrt/int8"):
            a, b = off[label], on[label]
            metric = " → ".join(f"{x['metrics'].get('metric', float('nan')):.4f}" for x in (a, b))
            drift = " → ".join(f"{x['metrics'].get('drift', float('nan')):+.4f}" for x in (a, b))
            print(f"| {name} | {label} | {metric} | {drift} | {a['gate']['status']} → {b['gate']['status']} |")


if __name__ == "__main__":
    main()
