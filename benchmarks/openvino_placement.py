"""deployc's per-runtime int8 ONNX files (targets.onnx.int8_placement: auto, runtimes: [onnxruntime, openvino]) beside
today's int8 file and NNCF's int8, each on the runtime it is for, timed in the same interleaved rounds; OpenVINO's
compiled layers and the task metric's drift.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache DEPLOYC_PEERS_DIR=/work/.peers \\
        nice -n 10 .venv/bin/python benchmarks/openvino_placement.py [--models yolov8n,resnet18] [--out DIR]

Per model, one build makes both files as a user gets them (default config, remedies off: a YOLOv8n build with
remedies takes an hour here): `int8` (onnxruntime's placement) and `int8@openvino` (OpenVINO's); a second build with
`int8_placement: onnxruntime` (what every build wrote before `auto`) gives "today's" file, and the script checks that
its graph equals `int8`'s. NNCF (default preset and MIXED) quantizes the fp32 artifact in its own venv
(benchmarks/peers) on the same calibration samples. YOLOv8n: the zoo's model, data and detection metric; ResNet-18:
random weights and images (benchmarks/resnet18_cpu.py; latency does not depend on them). 1 thread, f32 inference
precision on OpenVINO (so bf16-capable CPUs do not change the float part). Times: process CPU ms per inference (both
runtimes run a 1-thread inference on the calling thread), then wall ms in a shorter second interleaved run. Ratios
are medians of in-round ratios with a paired 95% bootstrap interval over the rounds; "faster"/"slower" only when the
whole interval is on one side of 1, else "tie". Last, the compiled layers in which deployc's OpenVINO file and NNCF's
differ (type/precision counts), which is where a timing gap between them can come from. An A/A control (NNCF's file
compiled a second time, timed in the same rounds) shows how far apart two identical networks read in one run: a gap
to NNCF no larger than the control's is no gap this benchmark can see.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
OV_CONFIG = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
TODAY = "today's int8|onnxruntime"
CONTROL = "NNCF default, compiled again (A/A control)"  # the timing key of the int8 file every build wrote before placement auto
INT8 = {"precision": ["int8"], "runtimes": ["onnxruntime", "openvino"], "threads": 1}


def yolov8n(out: Path):
    """(raw config, base dir, calibration Dataset, one input batch, scorer factory) for the zoo's YOLOv8n."""
    import yaml
    import zoo
    from tensorrt_placement import Scorer
    from zoo_lib import catalog, fetch

    from deployc.core.config import load_config
    from deployc.data.dataset import Dataset

    config_path = zoo.prepare(catalog.BY_NAME["yolov8n"], out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    config = load_config(raw, base_dir=config_path.parent)
    data = np.load(config_path.parent / "data.npz")
    calib = Dataset({"images": data["calib_images"][: config.quantize.samples]}, None, "zoo")

    def scorer(fp32: Path):
        return Scorer(config, config_path.parent / "data.npz", fp32, config.data.batch_size)

    return raw, config_path.parent, calib, {"images": data["images"][:1]}, scorer


def resnet18(out: Path):
    from resnet18_cpu import config
    from three_target_build import calibration_images

    from deployc.data.dataset import Dataset

    images = np.concatenate([x["image"] for x, _ in calibration_images()])
    return config(None), HERE, Dataset({"image": images}, None, "random"), {"image": images[:1]}, None


def built(raw: dict, base: Path, onnx_options: dict, out: Path) -> dict[str, dict]:
    """Rows of one onnx-only build with remedies off: {precision: manifest row with an absolute 'file'}."""
    from deployc.core.config import load_config
    from deployc.driver.build import build

    raw = {**raw, "targets": {"onnx": onnx_options}, "quantize": {**raw.get("quantize", {}), "remedies": "off"}}
    result = build(load_config(raw, base_dir=base), out=out, quiet=True, cache=False)
    return {a["precision"]: {**a, "file": result.out_dir / a["path"]} for a in result.manifest["artifacts"]}


def graph_digest(path: Path) -> str:
    """sha256 of the graph alone (metadata_props carry the config's digest, which differs between the builds)."""
    import onnx

    return hashlib.sha256(onnx.load(str(path)).graph.SerializeToString(deterministic=True)).hexdigest()


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


def compiled_layers(path: Path) -> list[tuple[str, str, str]]:
    """(type, runtime precision, name) of each layer of the network OpenVINO's CPU plugin compiles."""
    import openvino as ov

    ops = ov.Core().compile_model(str(path), "CPU", OV_CONFIG).get_runtime_model().get_ordered_ops()
    info = [(o.get_rt_info(), o.get_friendly_name()) for o in ops]
    return [(rt["layerType"].astype(str), rt["runtimePrecision"].astype(str), name) for rt, name in info]


def openvino_layers(path: Path) -> tuple[int, int, str]:
    """(layers, FakeQuantize left, Convolution precisions) of the network OpenVINO's CPU plugin compiles."""
    kinds = [(t, p) for t, p, _ in compiled_layers(path)]
    convs = collections.Counter(p for t, p in kinds if t == "Convolution")
    return len(kinds), sum(t == "FakeQuantize" for t, _ in kinds), " ".join(f"{n}×{p}" for p, n in convs.items())


def layer_difference(ours: Path, theirs: Path) -> str:
    """Compiled layers (type, precision) whose counts differ between two files on OpenVINO, and whether the same
    Convolutions were compiled (by name; OpenVINO names a Conv whose bias it split off '<name>/WithoutBiases'), so a
    timing gap can be traced to the layers that cause it."""
    a, b = compiled_layers(ours), compiled_layers(theirs)
    ca, cb = collections.Counter(x[:2] for x in a), collections.Counter(x[:2] for x in b)
    diff = {k: (ca[k], cb[k]) for k in sorted(set(ca) | set(cb)) if ca[k] != cb[k] and k[0] != "Const"}

    def convs(layers: list[tuple[str, str, str]]) -> list[str]:
        return sorted(name.removesuffix("/WithoutBiases") for t, _, name in layers if t == "Convolution")

    shown = "; ".join(f"{t}/{p} {n}↔{m}" for (t, p), (n, m) in diff.items()) or "none"
    return f"{shown} (Consts not counted; Convolutions {'the same' if convs(a) == convs(b) else 'DIFFER'} by name)"


def ov_drift(scorer, path: Path) -> float:
    """The metric's drift of a graph run on OpenVINO (batches of 16)."""
    import openvino as ov

    model = ov.Core().compile_model(str(path), "CPU", OV_CONFIG)
    images = scorer.inputs["images"]
    outs = [np.concatenate([np.asarray(model({"images": images[i : i + 16]})[0]) for i in range(0, len(images), 16)])]
    value = float(scorer.metric.fn(outs, scorer.reference if scorer.metric.similarity else scorer.targets))
    return scorer.metric.drift(scorer.reference_value, value)


def versus(cpu, key: str, baseline: str) -> str:
    """The median in-round CPU ratio key/baseline, its paired 95% bootstrap interval and what the interval says."""
    from perf_lib import ratio_interval, speed_verdict

    low, high = ratio_interval(cpu, key, baseline)
    return f"{cpu.ratio(key, baseline).median:.3f} [{low:.3f}–{high:.3f}] {speed_verdict(low, high)}"


def main(argv: list[str] | None = None) -> int:
    import openvino as ov

    from deployc.core.ort import session
    from deployc.core.timing import interleaved, load_average
    from deployc.passes.cpu_int8 import cpu_flags

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov8n,resnet18")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--wall-rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="openvino-placement-")))
    args = ap.parse_args(argv)
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or "vnni" in f)
    print(f"CPU flags: {' '.join(flags)}; load average at start: {load_average()}\n")
    print(
        "| model | file | runtime | CPU ms (median [IQR]) | wall ms | vs NNCF default (per round) [95% CI] verdict | "
        "vs today's int8 on onnxruntime [95% CI] verdict | OpenVINO layers | FakeQuantize left | Convolutions | drift "
        "| gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        raw, base, calib, one, make_scorer = (yolov8n if name == "yolov8n" else resnet18)(args.out)
        fp32 = built(raw, base, {"precision": ["fp32"], "threads": 1}, folder / "build-fp32")["fp32"]["file"]
        ours = built(raw, base, INT8, folder / "build-int8")
        today = built(
            raw, base, {**INT8, "runtimes": ["onnxruntime"], "int8_placement": "onnxruntime"}, folder / "today"
        )
        same = graph_digest(today["int8"]["file"]) == graph_digest(ours["int8"]["file"])
        print(f"{name}: today's int8 graph {'equals' if same else 'DIFFERS from'} deployc's int8 (onnxruntime) graph")
        # (label, file, runtime, manifest row or None)
        graphs = [
            ("fp32", fp32, "onnxruntime", None),
            ("fp32", fp32, "OpenVINO", None),
            ("today's int8", today["int8"]["file"], "onnxruntime", today["int8"]),
            ("deployc int8", ours["int8"]["file"], "onnxruntime", ours["int8"]),
            ("deployc int8 (onnxruntime's file)", ours["int8"]["file"], "OpenVINO", None),
            ("deployc int8@openvino", ours["int8@openvino"]["file"], "OpenVINO", ours["int8@openvino"]),
        ]
        for preset in (None, "MIXED"):
            got = nncf_int8(fp32, calib, preset, folder)
            if isinstance(got, str):
                print(f"{name}: NNCF {preset or 'default'} did not run: {got}", file=sys.stderr)
            else:
                graphs.append((f"NNCF {preset or 'default'}", got, "OpenVINO", None))
                if preset is None:  # A/A control: how far apart one file compiled twice times in the same rounds
                    graphs.append((CONTROL, got, "OpenVINO", None))
        runs, runs_paths = {}, {}
        for who, path, runtime, _ in graphs:
            runs_paths[f"{who}|{runtime}"] = path
            if runtime == "onnxruntime":
                runs[f"{who}|{runtime}"] = lambda s=session(path, threads=1), x=one: s.run(None, x)
            else:
                request = ov.Core().compile_model(str(path), "CPU", OV_CONFIG).create_infer_request()
                runs[f"{who}|{runtime}"] = lambda r=request, x=one: r.infer(x)
        cpu = interleaved(runs, rounds=args.rounds, per_round=5, clock="process_cpu")
        wall = interleaved(runs, rounds=args.wall_rounds, per_round=5, clock="wall")
        scorer = make_scorer(fp32) if make_scorer else None
        nncf = "NNCF default|OpenVINO" if "NNCF default|OpenVINO" in runs else None
        for who, path, runtime, row in graphs:
            key = f"{who}|{runtime}"
            layers, fq, convs = openvino_layers(path) if runtime == "OpenVINO" else ("—", "—", "—")
            drift, gate = "—", "—"
            if row is not None:
                drift, gate = f"{row['metrics'].get('drift', float('nan')):+.4f}", row["gate"]["status"]
            elif scorer is not None and ("int8" in who or who.startswith("NNCF")):
                value = (
                    ov_drift(scorer, path)
                    if runtime == "OpenVINO"
                    else scorer.metric.drift(scorer.reference_value, scorer.score(path))
                )
                drift = f"{value:+.4f}"
            t = cpu.times[key]
            vs_nncf = versus(cpu, key, nncf) if nncf else "—"
            vs_today = versus(cpu, key, TODAY)
            print(
                f"| {name} | {who} | {runtime} | {t.median:.2f} [{t.q1:.2f}–{t.q3:.2f}] | {wall.times[key].median:.2f} "
                f"| {vs_nncf} | {vs_today} | {layers} | {fq} | {convs} | {drift} | {gate} |",
                flush=True,
            )
        print(f"| {name} | load average: {cpu.load_before} before, {wall.load_after} after | | | | | | | | | | |")
        if nncf:
            ours_ov = next(p for w, p, r, _ in graphs if w == "deployc int8@openvino")
            print(
                f"{name}: compiled layers that differ from NNCF default's: {layer_difference(ours_ov, runs_paths[nncf])}"
            )
    print(f"\nfiles: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
