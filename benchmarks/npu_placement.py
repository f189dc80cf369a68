"""Where Arm's Vela places each tflite int8 artifact's ops on an Ethos-U, with channels-last I/O (layout: nhwc, the
default) and with the model's NCHW (layout: nchw): ops on the NPU, the ops left on the CPU with Vela's reason,
TRANSPOSE ops in the flatbuffer, estimated inference time, SRAM and flash (Vela's default system configuration).

    .venv/bin/python benchmarks/npu_placement.py                                  # all models, ethos-u55-128
    .venv/bin/python benchmarks/npu_placement.py --models digits-cnn --accelerators ethos-u55-128,ethos-u65-256
    .venv/bin/python benchmarks/npu_placement.py --vela old/model.int8.tflite     # Vela on files built elsewhere

ImageNet-shaped models have random weights and random normal images (no hub downloads here): Vela's placement and
estimates depend on the graph and shapes, not on the weights. Needs `pip install 'deployc[npu]'`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DIGITS_DATA = {"validation": "digits:test", "calibration": "digits:train", "metric": "top1"}
IMAGENET_DATA = {
    "validation": "three_target_build.py:validation_images",
    "calibration": "three_target_build.py:calibration_images",
    "metric": "cosine",
    "batch_size": 16,
}
MODELS = {
    "digits-cnn": ("deployc.examples.digits_cnn:pretrained", [1, 8, 8], DIGITS_DATA),
    "digits-mobilenetv3": ("deployc.examples.digits_cnn:mobilenetv3", [1, 8, 8], DIGITS_DATA),
    "mobilenetv3-small": ("deployc.examples.models:MobileNetV3Small", [3, 224, 224], IMAGENET_DATA),
    "resnet18": ("deployc.examples.models:ResNet18", [3, 224, 224], IMAGENET_DATA),
}


def config(name: str, layout: str, accelerators: list[str]) -> dict[str, Any]:
    factory, shape, data = MODELS[name]
    return {
        "name": name,
        "model": {"factory": factory, "inputs": [{"name": "image", "shape": ["batch", *shape]}]},
        "data": data,
        "quantize": {"samples": 64},
        "targets": {"tflite": {"precision": ["int8"], "layout": layout, "npu": accelerators}},
        "validate": {"max_drift": 0.02, "latency_runs": 1},
        "base_dir": str(HERE),
    }


def row(label: str, layout: str, ops: dict[str, int], gate: str, name: str, report: dict[str, Any]) -> list[str]:
    if "error" in report:
        return [
            label,
            layout,
            str(ops.get("TRANSPOSE", 0)),
            "—",
            f"not compiled: {report['error']}",
            "—",
            "—",
            "—",
            gate,
        ]
    from deployc.validation.gates import more_on_cpu

    cpu = "; ".join(f"{c['op']}: {c['reason']}" for c in report["cpu_fallback"][:8]) or "—"
    cpu += more_on_cpu({**report, "cpu_fallback": report["cpu_fallback"][:8]})
    return [
        label,
        layout,
        str(ops.get("TRANSPOSE", 0)),
        f"{report['npu_ops']}/{report['npu_ops'] + report['cpu_ops']}",
        cpu,
        f"{report['inference_ms']:.3f}",
        f"{report['sram_kib']:.1f}",
        f"{report['flash_kib']:.1f}",
        f"{gate} ({name})",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--accelerators", default="ethos-u55-128")
    ap.add_argument("--vela", nargs="*", type=Path, help="only run Vela on these .tflite files")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="npu-placement-")))
    args = ap.parse_args(argv)
    accelerators = args.accelerators.split(",")

    from deployc.driver.build import build
    from deployc.outputs.report import markdown_table
    from deployc.targets.tflite_npu import op_report
    from deployc.targets.vela import npu_reports, vela_missing

    if vela_missing():
        ap.error(vela_missing())
    header = ["model", "layout", "TRANSPOSE", "ops on NPU", "on the CPU (Vela's reason)", "est. ms", "SRAM KiB"]
    header += ["flash KiB", "gate (accelerator)"]
    rows = []
    if args.vela is not None:
        for path in args.vela:
            model = path.read_bytes()
            for name, report in npu_reports(model, accelerators).items():
                rows.append(row(path.name, "as built", op_report(model)[0], "—", name, report))
        print(markdown_table(header, rows))
        return 0
    for model in args.models.split(","):
        for layout in args.layouts.split(","):
            result = build(config(model, layout, accelerators), out=args.out / f"{model}-{layout}", quiet=True)
            (art,) = result.manifest["artifacts"]
            details = art["details"]
            gate = f"{art['gate']['status']}, drift {art['metrics'].get('drift', float('nan')):+.4f}"
            for name, report in details.get("npu", {}).get("accelerators", {}).items():
                rows.append(row(model, layout, details.get("ops", {}), gate, name, report))
            print(markdown_table(header, rows[-len(accelerators) :]), flush=True)
    print()
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
