"""The one-line start: a build config from command-line flags, written as a commented YAML file.

    deployc build --model FILE.py:fn [--weights W] [--input NAME:SHAPE[:DTYPE]] --data DATA
                  [--target onnx:int8 --target tflite:int8] --out DIR

builds into DIR and saves the config as DIR/deployc.yaml (paths relative to it), so `deployc build
DIR/deployc.yaml` is the same build. `deployc init` writes the same file without building. An .onnx or .pt2
file as --model needs no factory and no --input; with a factory, inputs missing from the flags are read from an
.npz data file (every array but `labels` and `calib_*`, batch axis first).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deployc.compiler.registry import target_names
from deployc.core.config import BuildConfig, load_config
from deployc.errors import UsageError

CONFIG_NAME = "deployc.yaml"  # the config a one-line build saves into its out dir
_DTYPES = ("float32", "float16", "int64", "int32", "bool")
_NPZ_DTYPES = {"float64": "float32", "float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32"}


def add_flags(p: argparse.ArgumentParser, targets: bool = True) -> None:
    """The one-line start's flags (shared by `deployc build` and `deployc init`)."""
    g = p.add_argument_group("one-line start (instead of a CONFIG)")
    g.add_argument(
        "--model", help="FILE.py:callable or package.module:callable returning an nn.Module; or FILE.onnx / FILE.pt2"
    )
    g.add_argument("--weights", help="weights for a factory: .safetensors or a state_dict .pt (loaded weights_only)")
    g.add_argument(
        "--input",
        action="append",
        metavar="NAME:SHAPE[:DTYPE]",
        help="a model input, e.g. image:batch,1,32,32 or ids:batch,128:int64 (repeatable; a name is a dynamic "
        "axis); default: read from an .npz --data",
    )
    g.add_argument("--data", help="validation data: digits[:train|test], FILE.npz or FILE.py:callable")
    g.add_argument(
        "--calibration", help="int8 calibration data (default: the npz's calib_* arrays, digits' train split)"
    )
    g.add_argument("--metric", help="top1 | top5 | cosine | mse | FILE.py:callable (default: from the data's labels)")
    g.add_argument("--max-drift", type=float, help="the drift budget in the metric's units (default 0.01)")
    g.add_argument("--name", help="names the artifacts (default: the model file's name)")
    if targets:
        g.add_argument(
            "--target",
            action="append",
            metavar="NAME[:PRECISION,...]",
            help="with a CONFIG: build only this target; one-line: a target and its precisions, e.g. onnx:int8 "
            "tflite:fp32,int8 (repeatable; default onnx:fp32,int8)",
        )


def wants_oneline(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("model", "weights", "input", "data", "calibration"))


@dataclass
class Written:
    """A config made from flags: its data (as the YAML text parses back), the text, and what was inferred."""

    raw: dict[str, Any]
    text: str
    notes: dict[str, list[str]] = field(default_factory=dict)
    base_dir: Path | None = None  # where the text is saved: its paths resolve against it

    @property
    def config(self) -> BuildConfig:
        return load_config(self.raw, base_dir=(self.base_dir or Path.cwd()).resolve())


def oneline_out(args: argparse.Namespace) -> Path:
    """--out, else deployc-out/<name>."""
    return args.out if args.out is not None else Path("deployc-out") / (args.name or _name(args.model or "model"))


def _relative(path: str, base: Path) -> str:
    """A path from the command line (relative to the current folder) as written in a config saved in `base`."""
    absolute = Path(path).expanduser().resolve()
    try:
        return Path(os.path.relpath(absolute, base.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return absolute.as_posix()


def _model_section(model: str, weights: str | None, base: Path) -> tuple[dict[str, Any], str]:
    """(model section without inputs, its kind): onnx, exported or factory."""
    lower = model.lower()
    if lower.endswith(".onnx"):
        kind, section = "onnx", {"onnx": _relative(model, base)}
    elif lower.endswith(".pt2"):
        kind, section = "exported", {"exported": _relative(model, base)}
    elif ":" in model:
        target, _, fn = model.rpartition(":")
        if not target or not fn.isidentifier():
            raise UsageError(f"--model: '{model}' is not FILE.py:callable or package.module:callable")
        where = _relative(target, base) if target.endswith(".py") else target
        kind, section = "factory", {"factory": f"{where}:{fn}"}
    else:
        raise UsageError(
            f"--model: '{model}' is not FILE.py:callable, package.module:callable, an .onnx or a .pt2 file "
            "(a pickled whole model needs a config with allow_pickle: true)"
        )
    if weights is not None:
        if kind != "factory":
            raise UsageError(f"--weights go with a factory --model (FILE.py:callable), not with an {kind} file")
        section["weights"] = _relative(weights, base)
    return section, kind


def parse_input(text: str) -> dict[str, Any]:
    """'image:batch,1,32,32[:float32]' (dims split by ',' or 'x'; a word is a dynamic axis) -> an input spec."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(
            f"--input: '{text}' is not NAME:SHAPE[:DTYPE], e.g. image:batch,1,32,32 or ids:batch,128:int64"
        )
    dims: list[int | str] = []
    for d in re.split(r"[,x]", parts[1]) if parts[1] != "[]" else []:
        d = d.strip()
        if not d:
            raise UsageError(f"--input: '{text}': an empty dimension in '{parts[1]}'")
        dims.append(int(d) if d.isdigit() else d)
    spec: dict[str, Any] = {"name": parts[0], "shape": dims}
    if len(parts) == 3:
        if parts[2] not in _DTYPES:
            raise UsageError(f"--input: '{text}': dtype '{parts[2]}' is not one of {', '.join(_DTYPES)}")
        spec["dtype"] = parts[2]
    return spec


def parse_targets(values: list[str] | None) -> dict[str, Any]:
    """['onnx:int8', 'onnx:fp32', 'tflite'] -> {onnx: {precision: [int8, fp32]}, tflite: {}}."""
    targets: dict[str, Any] = {}
    for value in values or ["onnx:fp32,int8"]:
        name, _, precisions = value.partition(":")
        if not name:
            raise UsageError(f"--target: '{value}' is not NAME[:PRECISION,...], e.g. onnx:int8")
        entry = targets.setdefault(name, {})
        for p in filter(None, (s.strip() for s in precisions.split(","))):
            if p not in entry.setdefault("precision", []):
                entry["precision"].append(p)
    return targets


def _npz_facts(path: Path) -> tuple[list[dict[str, Any]], str | None, dict[str, int], list[str]]:
    """(input specs, metric the labels suggest, {samples, classes}, notes) from an .npz data file; nothing when
    unreadable (the build's own loader then reports the file)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: (npz[k].shape, str(npz[k].dtype)) for k in npz.files}
            labels = npz["labels"] if "labels" in npz.files else None
    except Exception:
        return [], None, {}, []
    inputs, notes = [], []
    for name, (shape, dtype) in arrays.items():
        if name == "labels" or name.startswith("calib_") or not shape:
            continue
        spec = {"name": name, "shape": ["batch", *shape[1:]], "dtype": _NPZ_DTYPES.get(dtype, "float32")}
        inputs.append(spec)
        notes.append(f"{name}: {dtype} {list(shape)} in {path.name} -> shape [batch, {', '.join(map(str, shape[1:]))}]")
    samples = next((s[0] for k, (s, _) in arrays.items() if k != "labels" and not k.startswith("calib_") and s), 0)
    metric, counts = None, {"samples": samples}
    if labels is not None:
        integer = labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and bool(np.all(labels == np.round(labels))))
        metric = "top1" if integer and labels.ndim == 1 else "mse"
        classes = int(labels.max()) + 1 if integer and labels.ndim == 1 and labels.size else None
        counts.update({"classes": classes} if classes else {})
        notes.append(f"labels: {labels.dtype} {list(labels.shape)}" + (f", {classes} classes" if classes else ""))
    else:
        metric = "cosine"
        notes.append("no labels: the metric compares outputs with the model as loaded (cosine)")
    if any(k.startswith("calib_") for k in arrays):
        notes.append("calib_* arrays: the int8 calibration samples")
    return inputs, metric, counts, notes


def config_from_flags(
    args: argparse.Namespace, base: Path
) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, int]]:
    """The config the flags describe, paths relative to `base` (the folder the config is saved in), notes on what
    was read from the data file (per section), and its counts ({samples, classes} of an .npz)."""
    if not args.model:
        raise UsageError("--model: the one-line start needs a model (FILE.py:callable, FILE.onnx or FILE.pt2)")
    if not args.data:
        raise UsageError("--data: the one-line start needs validation data (digits, FILE.npz or FILE.py:callable)")
    model, kind = _model_section(args.model, args.weights, base)
    notes: dict[str, list[str]] = {"model": [], "data": []}
    counts: dict[str, int] = {}
    data: dict[str, Any] = {"validation": args.data}
    inputs = [parse_input(t) for t in args.input or []]
    metric = args.metric
    if args.data.lower().endswith(".npz"):
        data["validation"] = _relative(args.data, base)
        found, suggested, counts, facts = _npz_facts(Path(args.data))
        notes["data"] += [f"{counts['samples']} samples in {Path(args.data).name}"] if counts.get("samples") else []
        notes["data"] += facts
        if not inputs and kind == "factory" and found:
            inputs = found
            notes["model"].append(f"inputs read from {Path(args.data).name} (batch axis first)")
        metric = metric or suggested
    elif args.data.startswith("digits"):
        metric, counts = metric or "top1", {"classes": 10}
        notes["data"].append("scikit-learn's digits: 8x8 images, 10 classes")
    elif ":" in args.data:
        target, _, fn = args.data.rpartition(":")
        data["validation"] = f"{_relative(target, base) if target.endswith('.py') else target}:{fn}"
    if args.calibration:
        cal = args.calibration
        if cal.lower().endswith(".npz") or (":" in cal and cal.rpartition(":")[0].endswith(".py")):
            target, sep, fn = cal.rpartition(":") if not cal.lower().endswith(".npz") else (cal, "", "")
            cal = _relative(target, base) + (f":{fn}" if sep else "")
        data["calibration"] = cal
    if kind == "factory" and not inputs:
        raise UsageError(
            "--input: a factory model needs its inputs, e.g. --input image:batch,1,32,32 (or an .npz --data to read "
            "them from)"
        )
    if inputs:
        model["inputs"] = inputs
    data["metric"] = metric or "top1"
    raw: dict[str, Any] = {"name": args.name or _name(args.model), "model": model, "data": data}
    raw["targets"] = parse_targets(getattr(args, "target", None))
    raw["validate"] = {"max_drift": args.max_drift if args.max_drift is not None else 0.01}
    return raw, notes, counts


def _name(model: str) -> str:
    """The artifacts' name from the model: 'nets/mynet.py:make' -> 'mynet', 'pkg.mod:make' -> 'mod'."""
    stem = Path(model.rpartition(":")[0] if ":" in model and not model.lower().endswith((".onnx", ".pt2")) else model)
    word = stem.stem if stem.suffix else stem.name.rpartition(".")[2]
    word = re.sub(r"[^A-Za-z0-9_.-]", "_", word).lstrip(".-") or "model"
    return word[:100]


_SECTION_HELP = {
    "name": "names the artifact files (letters, digits, _ - .)",
    "model": "a factory 'FILE.py:callable' (+ weights), or onnx: FILE.onnx, or exported: FILE.pt2; "
    "inputs: a string dimension is a dynamic axis",
    "data": "validation: what every artifact is checked on (digits[:split], FILE.npz, FILE.py:callable); "
    "calibration: int8 calibration samples; metric: top1 | top5 | cosine | mse | FILE.py:callable",
    "targets": "{targets}, each with precision: [fp32, fp16, int8, dynamic]",
    "validate": "max_drift: the budget in the metric's own units (top1 0.01 = one point); an artifact past it fails",
}
_EXAMPLES = """\
# More (README "A config"):
# passes:                                  # torch-level passes before the targets, in order
#   - prune.structured: {ratio: 0.5}
#   - finetune: {epochs: 3}
# quantize: {calibration: minmax, samples: 256, per_channel: true}   # the int8 spec every target realises
"""


class _Dumper(yaml.SafeDumper):
    """Mappings in block style, lists of plain values on one line: `shape: [batch, 1, 32, 32]`."""


_Dumper.add_representer(
    dict, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=False)
)
_Dumper.add_representer(
    list,
    lambda d, data: d.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=all(not isinstance(v, (dict, list)) for v in data)
    ),
)


def render(raw: dict[str, Any], notes: dict[str, list[str]], header: list[str]) -> str:
    """The config as YAML with a comment above each section; parses back to `raw`."""
    lines = [f"# {h}" if h else "#" for h in header] + [""]
    for key, value in raw.items():
        if key in _SECTION_HELP:
            text = _SECTION_HELP[key].format(targets=" | ".join(target_names()))
            lines += ["# " + t for t in textwrap.wrap(f"{key}: {text}", 108, subsequent_indent="  ")]
        lines += ["#   " + t for n in notes.get(key, []) for t in textwrap.wrap(n, 106, subsequent_indent="  ")]
        lines.append(yaml.dump({key: value}, Dumper=_Dumper, sort_keys=False, width=110).rstrip())
        lines.append("")
    text = "\n".join(lines) + _EXAMPLES
    if yaml.safe_load(text) != raw:  # the file must give exactly this build (its key depends on it)
        raise AssertionError("the rendered config does not parse back to the same data")
    return text


def command_line(argv: list[str]) -> str:
    return "deployc " + shlex.join(argv)


def oneline_config(args: argparse.Namespace, argv: list[str], out: Path) -> Written:
    """The one-line build's config, as saved in OUT/deployc.yaml."""
    raw, notes, _ = config_from_flags(args, out)
    header = [
        f"deployc build config, written by: {command_line(argv)}",
        f"The same build again: deployc build {(out / CONFIG_NAME).as_posix()}   (paths are relative to this file)",
    ]
    return Written(raw, render(raw, notes, header), notes, out)
