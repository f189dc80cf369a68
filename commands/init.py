"""`deployc init --model M --data D`: inspect a model and a data file, write a commented build config that
validates (every check `validate-config` runs), and say how to build it. Same flags as the one-line start."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deployc.errors import UsageError


def inspect_model(config: Any) -> tuple[dict[str, Any], list[str]]:
    """(facts, comment lines) about the model as a build would load it: class, parameters, input and output
    shapes (a smoke run at batch 2 for a torch model; the graph's outputs for ONNX)."""
    from deployc.compiler.loader import load_model
    from deployc.core.quiet import ThirdPartyOutput

    with ThirdPartyOutput():
        state = load_model(config)
        outputs = _output_shapes(state)
    ins = ", ".join(f"{s.name} [{', '.join(map(str, s.shape))}] {s.dtype}" for s in state.inputs)
    outs = ", ".join(f"[{', '.join(map(str, shape))}]" for shape in outputs)
    facts: dict[str, Any] = {"inputs": ins, "outputs": outputs}
    if state.module is not None:
        facts["class"] = type(state.module).__name__
        facts["parameters"] = sum(p.numel() for p in state.module.parameters())
        head = f"{facts['class']}, {facts['parameters']:,} parameters"
    else:
        head = f"ONNX graph, {len(state.onnx.graph.node)} nodes, opset {state.onnx.opset_import[0].version}"
    return facts, [f"inspected: {head}; inputs {ins} -> outputs {outs} (at batch 2)"]


def _output_shapes(state: Any) -> list[list[Any]]:
    if state.module is None:
        return [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in state.onnx.graph.output]
    import torch

    with torch.no_grad():
        out = state.module(*state.example_tensors(batch=2))
    flat = list(out) if isinstance(out, (tuple, list)) else list(out.values()) if isinstance(out, dict) else [out]
    return [list(t.shape) for t in flat if hasattr(t, "shape")]


def _metric_note(facts: dict[str, Any], metric: str, classes: int | None) -> list[str]:
    """Whether the model's first output fits the metric the data suggests."""
    first = facts["outputs"][0] if facts["outputs"] else []
    if metric in ("top1", "top5") and classes and len(first) == 2 and isinstance(first[1], int):
        if first[1] < classes:
            raise UsageError(
                f"--data: the labels hold {classes} classes but the model's first output has {first[1]} values per "
                "sample; top1 needs one score per class (give --metric cosine or mse for other outputs)"
            )
        return [f"the first output has {first[1]} scores per sample for {classes} label classes: {metric} fits"]
    return []


def run_init(args: argparse.Namespace) -> dict[str, Any]:
    from deployc.core.config import load_config
    from deployc.driver.build import check
    from deployc.driver.oneline import command_line, config_from_flags, render
    from deployc.storage.files import write_text_atomic

    path: Path = args.config
    if path.exists() and not args.force:
        raise UsageError(f"--config: '{path}' exists; deployc init never replaces a file (pass --force to replace it)")
    if path.is_dir() or path.is_symlink():
        raise UsageError(f"--config: '{path}' is a folder or a link; give a file name like deployc.yaml")
    base = path.resolve().parent
    raw, notes, counts = config_from_flags(args, base)
    config = load_config(raw, base_dir=base)
    facts, model_notes = inspect_model(config)
    notes["model"] = model_notes + notes["model"]
    notes["data"] = notes["data"] + _metric_note(facts, raw["data"]["metric"], counts.get("classes"))
    header = [
        f"deployc build config, written by: {command_line(args.argv)}",
        f"Build it:  deployc build {path.as_posix()} --out DIR     Check it:  deployc validate-config {path.as_posix()}",
        "Paths are relative to this file. Every key is described in the README, section 'A config'.",
    ]
    text = render(raw, notes, header)
    _, manager = check(config)  # what validate-config checks, before anything is written
    write_text_atomic(path, text)
    return {"error": None, "config": str(path), "pipeline": manager.pipeline_string(), **facts}


def _cmd_init(args: argparse.Namespace) -> int:
    summary = run_init(args)
    if args.json:
        print(json.dumps(summary, default=str))
    elif not args.quiet:
        print(f"wrote {summary['config']} (pipeline: {summary['pipeline']})", file=sys.stderr)
        print(f"next: deployc build {summary['config']} --out DIR", file=sys.stderr)
    return 0


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    from deployc.driver.oneline import add_flags

    p = subparsers.add_parser(
        "init",
        parents=parents or [],
        help="inspect a model and a data file and write a commented config that validates",
        description="deployc init --model FILE.py:fn --data FILE.npz [--input NAME:SHAPE] [--target onnx:int8] "
        "[--config deployc.yaml]: loads the model as a build would (inputs, outputs, parameters), reads the data "
        "(inputs, labels, classes), and writes a config with a comment on every section.",
    )
    p.add_argument("--config", type=Path, default=Path("deployc.yaml"), help="the file to write (default deployc.yaml)")
    p.add_argument("--force", action="store_true", help="replace an existing --config file")
    add_flags(p)
    p.set_defaults(func=_cmd_init)
    return p
