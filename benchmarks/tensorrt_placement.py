"""TensorRT Q/DQ placement: deployc's tensorrt int8 network against NVIDIA Model Optimizer's ONNX PTQ (which
follows TensorRT's placement rules too) on zoo models, by QuantizeLinear count and task accuracy.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache DEPLOYC_PEERS_DIR=/work/main/.peers \\
        .venv/bin/python benchmarks/tensorrt_placement.py [--models yolov8n,paddleocr-cls,crepe-tiny] [--out DIR]

Per model: the zoo's config and data (benchmarks/zoo_lib), deployc's tensorrt target built twice (the unquantized
rest in fp16, the default, and in fp32); Model Optimizer (benchmarks/peers, its own venv) quantizes the fp32 graph
the same target lowered (its defaults: rest in fp16; and high_precision_dtype=fp32), calibrated on the same samples.
Every graph is scored the same way: onnxruntime (CPU, the TensorRT proxy) on the zoo's validation data with the
zoo's metric. QuantizeLinear counts are given in total and on activations: deployc stores int8 weights behind a
DequantizeLinear, Model Optimizer keeps float weights behind a Q/DQ pair (one QuantizeLinear per weight).
Goal (issue 12): on YOLOv8n, at most 1.25× Model Optimizer's QuantizeLinear count at equal or better accuracy.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

GOAL_RATIO = 1.25


def qdq_counts(path: Path) -> dict[str, int]:
    import onnx

    proto = onnx.load(str(path))
    weights = {i.name for i in proto.graph.initializer}
    weights |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    on_activations = sum(n.op_type == "QuantizeLinear" and n.input[0] not in weights for n in proto.graph.node)
    return {"q": ops["QuantizeLinear"], "q_act": on_activations, "dq": ops["DequantizeLinear"]}


class Scorer:
    """The zoo's metric of any graph of one model, on its validation data, run with onnxruntime."""

    def __init__(self, config, data: Path, fp32: Path, batch: int):
        from deployc.data.metrics import get_metric

        self.name = config.name
        with np.load(data) as npz:
            arrays = dict(npz)
        self.metric = get_metric(config)
        names = [i.name for i in config.model.inputs] if config.model.inputs else None
        self.inputs = {k: v for k, v in arrays.items() if not k.startswith("calib_") and k != "labels"}
        if names:
            self.inputs = {k: v for k, v in self.inputs.items() if k in names}
        self.labels, self.batch = arrays.get("labels"), batch
        self.reference = self.outputs(fp32)
        first = self.reference[0]
        use_labels = self.labels is not None and (self.metric.needs_labels or self.labels.shape == first.shape)
        self.targets = self.labels if use_labels else first
        self.reference_value = self.score(fp32)

    def outputs(self, path: Path, as_written: bool = False) -> list[np.ndarray]:
        """as_written: Q/DQ run as written (float math on the quantized values), as deployc's TensorRT proxy runs
        them; else onnxruntime's CPU int8 kernels (which saturate on x86 without VNNI), as a CPU user runs them."""
        from deployc.core.ort import session

        sess = session(path, threads=None, optimize=not as_written)
        n = len(next(iter(self.inputs.values())))
        parts = [
            sess.run(None, {k: v[i : i + self.batch] for k, v in self.inputs.items()}) for i in range(0, n, self.batch)
        ]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def score(self, path: Path, as_written: bool = False) -> float:
        outs = self.outputs(path, as_written)
        if self.metric.similarity:
            return float(self.metric.fn(outs, self.reference))
        return float(self.metric.fn(outs, self.targets))

    def row(self, who: str, rest: str, graph: Path, gate: str = "—", as_written: bool = True) -> dict:
        """One table row: Q/DQ counts, the metric and its drift from the fp32 graph's (TensorRT graphs: Q/DQ as
        written, the proxy's semantics)."""
        value = self.score(graph, as_written)
        drift = self.metric.drift(self.reference_value, value)
        return {"model": self.name, "who": who, "rest": rest, **qdq_counts(graph), "value": value, "drift": drift,
                "gate": gate}  # fmt: skip


def deployc_builds(name: str, out: Path) -> tuple[dict, dict[str, dict], Path]:
    """The zoo config of `name`, and deployc's tensorrt int8 artifact with the rest in fp16 and in fp32."""
    import yaml
    import zoo
    from zoo_lib import catalog, fetch

    from deployc.core.config import load_config
    from deployc.driver.build import build

    config_path = zoo.prepare(catalog.BY_NAME[name], out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    arts = {}
    for rest in ("fp16", "fp32"):
        raw["targets"] = {"tensorrt": {"precision": ["fp32", "int8"], "int8_high_precision": rest}}
        config = load_config(raw, base_dir=config_path.parent)
        result = build(config, out=config_path.parent / f"build-{rest}", quiet=True)
        by = {a["precision"]: {**a, "file": result.out_dir / a["path"]} for a in result.manifest["artifacts"]}
        arts[f"int8, rest {rest}"], arts["fp32"] = by["int8"], by["fp32"]
    return config, arts, config_path.parent


def modelopt_graphs(fp32: Path, folder: Path) -> dict[str, Path | str]:
    """Model Optimizer's int8 graphs of `fp32` (rest fp16: its default; rest fp32), or why it could not run."""
    from peers import PeerError, available_peers, quantize_with_peer

    reason = available_peers().get("modelopt")
    if reason:
        return {"fp16": reason, "fp32": reason}
    with np.load(folder / "data.npz") as npz:
        np.savez(
            folder / "calib.npz", **{k.removeprefix("calib_"): v for k, v in npz.items() if k.startswith("calib_")}
        )
    graphs: dict[str, Path | str] = {}
    for rest, options in (("fp16", {}), ("fp32", {"high_precision_dtype": "fp32"})):
        out = folder / f"modelopt.{rest}.onnx"
        try:
            with open(folder / f"modelopt.{rest}.log", "w") as log:
                quantize_with_peer("modelopt", fp32, folder / "calib.npz", out, options=options, log=log)
            graphs[rest] = out
        except PeerError as exc:
            graphs[rest] = str(exc)
    return graphs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov8n,paddleocr-cls,crepe-tiny")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="trt-placement-")))
    args = ap.parse_args(argv)
    os.environ.setdefault("DEPLOYC_CACHE_DIR", str(args.out / "pass-cache"))

    rows, verdicts = [], []
    for name in args.models.split(","):
        config, arts, folder = deployc_builds(name, args.out)
        scorer = Scorer(config, folder / "data.npz", arts["fp32"]["file"], config.data.batch_size)

        mine = {rest: scorer.row("deployc tensorrt int8", rest, arts[f"int8, rest {rest}"]["file"],
                                 arts[f"int8, rest {rest}"]["gate"]["status"])
                for rest in ("fp16", "fp32")}  # fmt: skip
        theirs = {}
        for rest, graph in modelopt_graphs(arts["fp32"]["file"], folder).items():
            if isinstance(graph, str):
                print(f"{name}: Model Optimizer (rest {rest}) did not run: {graph}", file=sys.stderr)
            else:
                theirs[rest] = scorer.row("Model Optimizer ONNX PTQ", rest, graph)
        rows += [scorer.row("fp32 (no quantization)", "—", arts["fp32"]["file"]), *mine.values(), *theirs.values()]
        if name == "yolov8n" and "fp16" in theirs:  # each with its default: the rest in fp16
            ours, peer = mine["fp16"], theirs["fp16"]
            ratio = ours["q"] / peer["q"]
            met = ratio <= GOAL_RATIO and ours["drift"] <= peer["drift"]
            verdicts.append(
                f"YOLOv8n: deployc {ours['q']} QuantizeLinear vs Model Optimizer {peer['q']} ({ratio:.2f}×, goal ≤ "
                f"{GOAL_RATIO}×), {scorer.metric.label} {ours['value']:.4f} vs {peer['value']:.4f}: "
                f"{'met' if met else 'NOT met'}"
            )
    print("| model | quantizer | rest | Q | Q on activations | DQ | metric | drift vs fp32 | deployc gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['who']} | {r['rest']} | {r['q']} | {r['q_act']} | {r['dq']} | {r['value']:.4f} | "
            f"{r['drift']:+.4f} | {r['gate']} |"
        )
    print("\n" + "\n".join(verdicts))
    print(f"\nfiles: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
