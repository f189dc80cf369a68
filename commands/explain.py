"""`deployc explain BUILD_DIR` (a command beside the CLI): where int8 drift comes from — per-layer error between a build's fp32
and int8 ONNX artifacts on its calibration data, worst layers first."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deployc.errors import UsageError
from deployc.passes.sensitivity import LayerError, activation_errors, format_errors

_HOW = (
    "error = squared error / squared fp32 value of the layer's output, per channel, averaged over "
    "channels (where the next layer reads it, after int8); added = error beyond what its inputs already carried"
)


def _manifest(build_dir: Path) -> dict[str, Any]:
    path = build_dir / "manifest.json"
    if not path.is_file():
        raise UsageError(f"{build_dir}: no manifest.json (not a finished deployc build)")
    return json.loads(path.read_text())


def _artifact(manifest: dict[str, Any], build_dir: Path, precision: str) -> dict[str, Any]:
    found = [
        a
        for a in manifest["artifacts"]
        if a.get("path", "") and a["path"].endswith(".onnx") and a["precision"] == precision
    ]
    if not found:
        have = ", ".join(f"{a['target']}/{a['precision']}" for a in manifest["artifacts"]) or "none"
        raise UsageError(
            f"{build_dir}: explain compares an fp32 and an int8 ONNX artifact; this build has no "
            f"{precision} one (artifacts: {have}); add it to targets.onnx.precision"
        )
    return found[0]


def layer_report(
    build_dir: str | Path, config: str | Path | None = None, samples: int = 64
) -> tuple[list[LayerError], dict[str, Any]]:
    """(per-layer errors worst first, facts about the comparison) for a finished build."""
    import onnx

    from deployc.core.config import load_config
    from deployc.core.state import TensorSpec
    from deployc.data.sources import calibration_source, load_dataset

    build_dir = Path(build_dir)
    manifest = _manifest(build_dir)
    fp32, int8 = _artifact(manifest, build_dir, "fp32"), _artifact(manifest, build_dir, "int8")
    cfg = load_config(config) if config else load_config(manifest["config"])
    specs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in fp32["inputs"])
    source = calibration_source(cfg) or cfg.data.validation
    role = "calibration" if calibration_source(cfg) else "validation"
    data = load_dataset(source, cfg, specs, role).take(samples)
    errors = activation_errors(onnx.load(str(build_dir / fp32["path"])), onnx.load(str(build_dir / int8["path"])), data)
    facts = {
        "fp32": fp32["path"],
        "int8": int8["path"],
        "data": f"data.{role} ({data.source}, {len(data)} samples)",
        "remedies": int8.get("details", {}).get("remedies"),
        "warnings": int8.get("details", {}).get("warnings", []),
        "drift": (int8.get("metrics") or {}).get("drift"),
        "before_quantization": _loss_before_quantization(manifest, fp32, int8),
    }
    return errors, facts


def _loss_before_quantization(manifest: dict[str, Any], fp32: dict[str, Any], int8: dict[str, Any]) -> str | None:
    """Why this comparison cannot explain the drift: the loss is already in the fp32 artifact (or before it)."""
    fp32_drift = (fp32.get("metrics") or {}).get("drift")
    if (fp32.get("gate") or {}).get("status") == "fail" and isinstance(fp32_drift, (int, float)):
        return (
            f"the fp32 artifact already drifts {fp32_drift * 100:+.2f}% (gate fail): the loss comes before "
            f"quantization, so per-layer int8 errors cannot show where it is ({manifest.get('diagnosis') or ''})"
        ).replace(" ()", "")
    if "the loss comes before quantization" in (int8.get("gate") or {}).get("reason", ""):
        return f"the loss comes before quantization, not from these int8 layers: {manifest.get('diagnosis') or ''}"
    return None


def explain(build_dir: str | Path, config: str | Path | None = None, samples: int = 64, top: int | None = None) -> str:
    """The per-layer error table as text, worst layers first, with the remedies' outcome when there were any."""
    errors, facts = layer_report(build_dir, config, samples)
    lines = [f"per-layer error: {facts['int8']} vs {facts['fp32']} on {facts['data']}", _HOW, ""]
    if facts["drift"] is not None:
        lines.insert(1, f"int8 artifact drift: {facts['drift'] * 100:+.2f}%")
    if facts["before_quantization"]:
        lines.insert(2, f"NOTE: {facts['before_quantization']}")
    lines.append(format_errors(errors, top))
    remedies = facts["remedies"]
    if remedies:
        kept = ", ".join(remedies["fallback"]) or "none"
        drift = remedies["trial_log"][remedies["chosen_trial"] - 1]["drift"]
        shown = "n/a" if drift is None else f"{drift:+.4g}"
        lines += [
            "",
            f"remedies: trial {remedies['chosen_trial']} of {remedies['trials']} shipped, drift {shown} "
            f"(budget {remedies['budget']:g}, {'passed' if remedies['passed'] else 'failed'}), layers kept in fp32: "
            f"{kept}",
        ]
    lines += [f"warning: {w}" for w in facts["warnings"]]
    return "\n".join(lines)


def _cmd_explain(args: argparse.Namespace) -> int:
    if args.json:
        errors, facts = layer_report(args.build_dir, args.config, args.samples)
        shown = errors[: args.top] if args.top else errors
        print(json.dumps({**facts, "layers": [e.to_json() for e in shown]}, indent=2))
    else:
        print(explain(args.build_dir, args.config, args.samples, args.top))
    return 0


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """Register `deployc explain BUILD_DIR` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "explain", parents=parents or [], help="per-layer error between a build's fp32 and int8 artifacts, worst first"
    )
    p.add_argument("build_dir", type=Path)
    p.add_argument("--config", type=Path, help="the build's config file, when its data paths are relative to it")
    p.add_argument("--samples", type=int, default=64, help="calibration samples to compare on (default 64)")
    p.add_argument("--top", type=int, help="show only the N worst layers")
    p.set_defaults(func=_cmd_explain)
    return p
