"""`deployc explain BUILD_DIR` (a command beside the CLI): where int8 drift comes from — per-layer error between a build's fp32
and int8 ONNX artifacts on its calibration data, worst layers first.

The build folder is data (commands/build_dir.py): its manifest is checked, its artifacts read as regular files
inside it, and nothing it names is imported; when its data comes from a factory, the user names the config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deployc.cli import count, in_range
from deployc.errors import UsageError
from deployc.passes.sensitivity import LayerError, activation_errors, format_errors

MAX_SAMPLES = 1_000_000
MAX_TOP = 100_000

_HOW = (
    "error = squared error / squared fp32 value of the layer's output, per channel, averaged over "
    "channels (where the next layer reads it, after int8); added = error beyond what its inputs already carried"
)


def _artifact(manifest: dict[str, Any], build_dir: Path, precision: str) -> tuple[dict[str, Any], int]:
    found = [
        (a, i)
        for i, a in enumerate(manifest["artifacts"])
        if (a.get("path") or "").endswith(".onnx") and a["precision"] == precision
    ]
    if not found:
        have = ", ".join(f"{a['target']}/{a['precision']}" for a in manifest["artifacts"]) or "none"
        raise UsageError(
            f"{build_dir}: explain compares an fp32 and an int8 ONNX artifact; this build has no "
            f"{precision} one (artifacts: {have}); add it to targets.onnx.precision"
        )
    return found[0]


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def layer_report(
    build_dir: str | Path, config: str | Path | None = None, samples: int = 64
) -> tuple[list[LayerError], dict[str, Any]]:
    """(per-layer errors worst first, facts about the comparison) for a finished build."""
    from deployc.commands.build_dir import config_for, load_onnx_artifact, read_manifest
    from deployc.core.state import TensorSpec
    from deployc.data.sources import calibration_source, load_dataset

    in_range("samples", samples, 1, MAX_SAMPLES)
    build_dir = Path(build_dir)
    manifest = read_manifest(build_dir)
    (fp32, i32), (int8, i8) = _artifact(manifest, build_dir, "fp32"), _artifact(manifest, build_dir, "int8")
    cfg = config_for(build_dir, manifest, config, model=False)
    specs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in fp32["inputs"])
    source = calibration_source(cfg) or cfg.data.validation
    if source is None:
        raise UsageError(f"{build_dir}: its config has no data.validation or data.calibration to compare on")
    role = "calibration" if calibration_source(cfg) else "validation"
    fp32_proto, int8_proto = load_onnx_artifact(build_dir, fp32, i32), load_onnx_artifact(build_dir, int8, i8)
    data = load_dataset(source, cfg, specs, role).take(samples)
    errors = activation_errors(fp32_proto, int8_proto, data)
    facts = {
        "fp32": fp32["path"],
        "int8": int8["path"],
        "data": f"data.{role} ({data.source}, {len(data)} samples)",
        "remedies": int8["details"].get("remedies") if isinstance(int8.get("details"), dict) else None,
        "warnings": [str(w) for w in _list(int8.get("details", {}).get("warnings"))],
        "drift": _number((int8.get("metrics") or {}).get("drift")),
    }
    return errors, facts


def explain(build_dir: str | Path, config: str | Path | None = None, samples: int = 64, top: int | None = None) -> str:
    """The per-layer error table as text, worst layers first, with the remedies' outcome when there were any."""
    if top is not None:
        in_range("top", top, 1, MAX_TOP)
    errors, facts = layer_report(build_dir, config, samples)
    lines = [f"per-layer error: {facts['int8']} vs {facts['fp32']} on {facts['data']}", _HOW, ""]
    if facts["drift"] is not None:
        lines.insert(1, f"int8 artifact drift: {facts['drift'] * 100:+.2f}%")
    lines.append(format_errors(errors, top))
    if facts["remedies"]:
        lines += ["", _remedies_line(facts["remedies"], Path(build_dir))]
    lines += [f"warning: {w}" for w in facts["warnings"]]
    return "\n".join(lines)


def _remedies_line(remedies: Any, build_dir: Path) -> str:
    """The remedies' outcome, read from the manifest (data: a malformed record is exit 2 naming it)."""
    try:
        kept = ", ".join(map(str, remedies["fallback"])) or "none"
        drift = remedies["trial_log"][remedies["chosen_trial"] - 1]["drift"]
        shown = "n/a" if drift is None else f"{drift:+.4g}"
        return (
            f"remedies: trial {remedies['chosen_trial']} of {remedies['trials']} shipped, drift {shown} "
            f"(budget {remedies['budget']:g}, {'passed' if remedies['passed'] else 'failed'}), layers kept in fp32: "
            f"{kept}"
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise UsageError(
            f"{build_dir / 'manifest.json'}: the int8 artifact's details.remedies is not what deployc writes "
            f"({type(exc).__name__}: {exc})"
        ) from None


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
    p.add_argument(
        "--samples",
        type=count(MAX_SAMPLES),
        default=64,
        help="calibration samples to compare on (default 64)",
    )
    p.add_argument("--top", type=count(MAX_TOP), help="show only the N worst layers")
    p.set_defaults(func=_cmd_explain)
    return p
