"""deployc's int8 ONNX with each Q/DQ placement (targets.onnx.int8_placement) on onnxruntime and OpenVINO, beside
NNCF's int8 on OpenVINO: latency in the same interleaved rounds, OpenVINO's compiled layers, and (YOLOv8n) drift.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache DEPLOYC_PEERS_DIR=/work/.peers \\
        .venv/bin/python benchmarks/openvino_placement.py [--models yolov8n,resnet18] [--out DIR]

The int8 graphs come from the passes a build runs (quantize.int8 with the target's settings, then cpu.int8) on
deployc's fp32 artifact and its calibration samples, without the remedy loop (default config: minmax, bias
correction): a YOLOv8n build with remedies takes an hour here. YOLOv8n: the zoo's model, data and detection metric
(benchmarks/zoo_lib); ResNet-18: random weights and images (benchmarks/resnet18_cpu.py; latency does not depend on
them). NNCF (default preset and MIXED) runs in its own venv (benchmarks/peers). 1 thread, thread CPU clock, f32
inference precision on OpenVINO (so bf16-capable CPUs do not change the float part).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
OV_CONFIG = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}


def yolov8n(out: Path):
    """(fp32 graph, calibration Dataset, one input batch, scorer) for the zoo's YOLOv8n."""
    import yaml
    import zoo
    from tensorrt_placement import Scorer
    from zoo_lib import catalog, fetch

    from deployc.core.config import load_config
    from deployc.data.dataset import Dataset
    from deployc.driver.build import build

    config_path = zoo.prepare(catalog.BY_NAME["yolov8n"], out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    raw["targets"] = {"onnx": {"precision": ["fp32"]}}
    config = load_config(raw, base_dir=config_path.parent)
    result = build(config, out=config_path.parent / "build-fp32", quiet=True)
    fp32 = result.out_dir / result.manifest["artifacts"][0]["path"]
    data = np.load(config_path.parent / "data.npz")
    calib = Dataset({"images": data["calib_images"][: config.quantize.samples]}, None, "zoo")
    scorer = Scorer(config, config_path.parent / "data.npz", fp32, config.data.batch_size)
    return fp32, calib, {"images": data["images"][:1]}, scorer


def resnet18(out: Path):
    from resnet18_cpu import config
    from three_target_build import calibration_images

    from deployc.core.config import load_config
    from deployc.data.dataset import Dataset
    from deployc.driver.build import build

    raw = config(None)
    raw["targets"] = {"onnx": {"precision": ["fp32"]}}
    result = build(load_config(raw, base_dir=HERE), out=out / "resnet18" / "build-fp32", quiet=True, cache=False)
    fp32 = result.out_dir / result.manifest["artifacts"][0]["path"]
    images = np.concatenate([x["image"] for x, _ in calibration_images()])
    return fp32, Dataset({"image": images}, None, "random"), {"image": images[:1]}, None


def deployc_int8(fp32: Path, calib, placement: str, out: Path) -> tuple[Path, dict]:
    """quantize.int8 + cpu.int8 as the onnx target runs them for this CPU and placement."""
    import onnx

    from deployc.passes.cpu_int8 import pad_conv_input_channels, profile, quantizer_settings
    from deployc.passes.cpu_int8 import spatial_means_to_global_pool as global_pool
    from deployc.passes.onnx_numerics import sample_feeds
    from deployc.passes.openvino_qdq import openvino_placement
    from deployc.passes.opset import upgrade_for_qdq
    from deployc.passes.quantize import Int8Config, quantize_int8_selected

    proto = onnx.load(str(fp32))
    spec = Int8Config(samples=len(calib), **quantizer_settings("auto", placement))
    up = upgrade_for_qdq(proto, sample_feeds(proto, calib))
    graph, _ = global_pool(quantize_int8_selected(up.proto, calib, spec, root=proto).proto)
    graph = pad_conv_input_channels(graph)[0] if profile("auto").pad_conv_channels else graph
    graph, dropped = openvino_placement(graph) if placement == "openvino" else (graph, 0)
    path = out / f"deployc.int8.{placement}.onnx"
    onnx.save(graph, path)
    return path, {"qdq_pairs_dropped": dropped}


def nncf_int8(fp32: Path, calib, preset: str | None, out: Path) -> Path | str:
    from peers import PeerError, available_peers, quantize_with_peer

    if reason := available_peers().get("nncf"):
        return reason
    npz = out / "calib.npz"
    np.savez(npz, **calib.inputs)
    path = out / f"nncf.{preset or 'default'}.int8.xml"
    try:
        with open(path.with_suffix(".log"), "w") as log:
            quantize_with_peer("nncf", fp32, npz, path, options={"preset": preset} if preset else {}, log=log)
    except PeerError as exc:
        return str(exc)
    return path


def openvino_layers(path: Path) -> tuple[int, int, str]:
    """(layers, FakeQuantize left, Convolution precisions) of the network OpenVINO's CPU plugin compiles."""
    import openvino as ov

    ops = ov.Core().compile_model(str(path), "CPU", OV_CONFIG).get_runtime_model().get_ordered_ops()
    kinds = [(o.get_rt_info()["layerType"].astype(str), o.get_rt_info()["runtimePrecision"].astype(str)) for o in ops]
    convs = collections.Counter(p for t, p in kinds if t == "Convolution")
    return len(kinds), sum(t == "FakeQuantize" for t, _ in kinds), " ".join(f"{n}×{p}" for p, n in convs.items())


def main(argv: list[str] | None = None) -> int:
    import openvino as ov

    from deployc.core.ort import session
    from deployc.core.timing import interleaved
    from deployc.passes.cpu_int8 import cpu_flags

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov8n,resnet18")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="openvino-placement-")))
    args = ap.parse_args(argv)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or "vnni" in f)
    print(f"CPU flags: {' '.join(flags)}\n")
    print("| model | graph | runtime | ms | vs fp32 on onnxruntime | vs fp32 on OpenVINO | OpenVINO layers | "
          "FakeQuantize left | Convolutions | drift |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        fp32, calib, one, scorer = (yolov8n if name == "yolov8n" else resnet18)(args.out)
        graphs = {"fp32": fp32}
        for placement in ("onnxruntime", "openvino"):
            graphs[f"deployc int8 ({placement} placement)"] = deployc_int8(fp32, calib, placement, folder)[0]
        for preset in (None, "MIXED"):
            got = nncf_int8(fp32, calib, preset, folder)
            if isinstance(got, str):
                print(f"{name}: NNCF {preset or 'default'} did not run: {got}", file=sys.stderr)
            else:
                graphs[f"NNCF {preset or 'default'}"] = got
        runs = {}
        for who, path in graphs.items():
            if path.suffix == ".onnx":
                runs[(who, "onnxruntime")] = lambda s=session(path, threads=1), x=one: s.run(None, x)
            request = ov.Core().compile_model(str(path), "CPU", OV_CONFIG).create_infer_request()
            runs[(who, "OpenVINO")] = lambda r=request, x=one: r.infer(x)
        keys = {k: f"{k[0]}|{k[1]}" for k in runs}
        rounds = interleaved(
            {keys[k]: fn for k, fn in runs.items()}, rounds=args.rounds, per_round=5, clock="thread_cpu"
        )
        for (who, runtime), key in keys.items():
            path = graphs[who]
            layers, fq, convs = openvino_layers(path) if runtime == "OpenVINO" else ("—", "—", "—")
            drift = "—"
            if scorer is not None:
                if runtime == "OpenVINO":
                    model = ov.Core().compile_model(str(path), "CPU", OV_CONFIG)
                    outs = [np.concatenate([np.asarray(model({k: v[i : i + 16] for k, v in scorer.inputs.items()})[0])
                                            for i in range(0, len(scorer.inputs["images"]), 16)])]  # fmt: skip
                    value = float(
                        scorer.metric.fn(outs, scorer.reference if scorer.metric.similarity else scorer.targets)
                    )
                else:
                    value = scorer.score(path)
                drift = f"{scorer.metric.drift(scorer.reference_value, value):+.4f}"
            print(
                f"| {name} | {who} | {runtime} | {rounds.times[key].median:.2f} | "
                f"{rounds.ratio(key, 'fp32|onnxruntime').median:.3f} | {rounds.ratio(key, 'fp32|OpenVINO').median:.3f} "
                f"| {layers} | {fq} | {convs} | {drift} |",
                flush=True,
            )
        print(f"| {name} | load average before timing: {rounds.load_before} | | | | | | | | |")
    print(f"\nfiles: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
