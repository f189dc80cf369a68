"""int8 of real zoo models: deployc's default config against the quantizers users would pick instead, on the same
fp32 graph, calibration samples, validation data and task metric, in one run.

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache DEPLOYC_PEERS_DIR=/work/main/.peers \\
        .venv/bin/python benchmarks/peers_int8.py [--models paddleocr-cls,yolov8n,minilm,silero-vad,crepe-full]

Per model (benchmarks/zoo_lib): deployc builds the zoo config with targets onnx [fp32, int8] and tensorrt [int8] and
nothing else changed (remedies on, as by default). The peers quantize deployc's onnx/fp32 artifact (the model as
loaded, exported or simplified; outputs equal within fp32 rounding) with the first `quantize.samples` calibration
samples deployc used, through benchmarks/peers (each in its own venv):
- onnxruntime `quantize_static` with library defaults (a CPU artifact),
- NVIDIA Model Optimizer ONNX PTQ with its defaults (a TensorRT artifact: rest in fp16), and with
  high_precision_dtype=fp32.
Every graph is scored here with the zoo's metric on the validation set: CPU artifacts (deployc onnx/int8,
quantize_static) with onnxruntime's CPU kernels as users run them; TensorRT artifacts (deployc tensorrt/int8,
Model Optimizer) with their Q/DQ run as written (deployc's proxy: no TensorRT here). Latency ratio to fp32 (batch 1,
deployc.core.timing's interleaved rounds, thread CPU clock) only for the CPU artifacts: a proxy's latency says nothing
about a GPU. Verdict per model: each shipped deployc int8 artifact's drift against the best peer that wrote Q/DQ (a
peer that quantized nothing is listed as such, not counted as an int8 result).

How sure each figure is (zoo_lib/resample.py): every graph of a model is scored on the same 2000 bootstrap resamples
of the validation samples, so each row's drift gets a paired 95% interval (its difference to fp32 per resample), and
each row the samples it scores worse / better than fp32 (with an exact McNemar p-value where per-sample scores are
right/wrong). Two verdicts per shipped deployc artifact, side by side: the raw rule (drift ≤ the best int8 peer's
drift) and "at least as accurate within the 95% CI": no int8 peer is better by a margin whose paired 95% interval
(of deployc's drift minus the peer's, per resample) lies wholly above 0. A difference inside the interval is a tie by
the second rule, never by the first.

NNCF on OpenVINO (issue 26): nncf.quantize(ov.convert_model(fp32), ...) with its default preset (PERFORMANCE) and
MIXED, and on YOLOv8n MIXED with Ultralytics' ignored scope for the head (its own exporter's setting); the IR it
writes runs on OpenVINO only. Every CPU graph that is ONNX (deployc's onnx/int8, quantize_static) is scored on
onnxruntime and on OpenVINO (f32 inference precision, so bf16-capable CPUs do not change the float part), and timed
on both runtimes in the same interleaved rounds (1 thread, thread CPU clock: both run inference on the calling
thread). Needs `openvino` in deployc's venv (pip install 'deployc[openvino]').
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

MODELS = "paddleocr-cls,yolov8n,minilm,silero-vad,crepe-full"
PEERS = (  # (label, tool, options, kind)
    ("onnxruntime quantize_static (defaults)", "ort", {}, "cpu"),
    ("Model Optimizer ONNX PTQ (defaults: rest fp16)", "modelopt", {}, "tensorrt"),
    ("Model Optimizer ONNX PTQ (rest fp32)", "modelopt", {"high_precision_dtype": "fp32"}, "tensorrt"),
    ("NNCF (default preset) on OpenVINO", "nncf", {}, "openvino"),
    ("NNCF MIXED on OpenVINO", "nncf", {"preset": "MIXED"}, "openvino"),
)
# where NNCF's users set an ignored scope: Ultralytics' exporter on YOLO heads (patterns rewritten for the names an
# ONNX export gives: model.22 is the Detect head; its box decoding arithmetic, the DFL and the Sigmoids stay float)
IGNORED_SCOPES = {
    "yolov8n": {
        "patterns": [r".*/model\.22/(Add|Sub|Mul|Div)[^/]*", r".*/model\.22/dfl/.*"],
        "types": ["Sigmoid"],
    }
}
OV_CONFIG = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}


def deployc_build(name: str, out: Path, reuse: Path | None = None) -> tuple[object, dict[str, dict], Path]:
    """The zoo config of `name` built by deployc (onnx fp32 + int8, tensorrt int8); artifacts by label.
    `reuse`: an earlier build of that same config (its manifest's config must match), read instead of building."""
    import yaml
    import zoo
    from zoo_lib import catalog, fetch

    from deployc.core.config import load_config
    from deployc.driver.build import build
    from deployc.storage.files import read_json

    config_path = zoo.prepare(catalog.BY_NAME[name], out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    raw["targets"] = {"onnx": {"precision": ["fp32", "int8"]}, "tensorrt": {"precision": ["int8"]}}
    config = load_config(raw, base_dir=config_path.parent)
    if reuse is None:
        result = build(config, out=config_path.parent / "build-peers", quiet=True)
        out_dir, manifest = result.out_dir, result.manifest
    else:
        out_dir, manifest = reuse, read_json(reuse / "manifest.json", "--reuse")
        built = {(a["target"], a["precision"]) for a in manifest["artifacts"]}
        if built != {("onnx", "fp32"), ("onnx", "int8"), ("tensorrt", "int8")}:
            raise SystemExit(f"--reuse {reuse}: built {sorted(built)}, not onnx fp32+int8 and tensorrt int8")
        want = config.model_dump(mode="json")["quantize"]
        differ = {k for k, v in manifest["config"]["quantize"].items() if want.get(k) != v}
        if differ:
            raise SystemExit(f"--reuse {reuse}: built with other quantize settings ({sorted(differ)})")
        print(f"{name}: deployc artifacts read from {reuse}", file=sys.stderr)
    arts = {
        f"{a['target']}/{a['precision']}": {**a, "file": out_dir / a["path"] if a.get("path") else None}
        for a in manifest["artifacts"]
    }
    return config, arts, config_path.parent


def calibration_npz(folder: Path, samples: int) -> Path:
    """The first `samples` calibration samples (deployc's quantize.samples), named after the model inputs."""
    with np.load(folder / "data.npz") as npz:
        calib = {k.removeprefix("calib_"): v[:samples] for k, v in npz.items() if k.startswith("calib_")}
        if not calib:  # no separate calibration arrays: deployc calibrates on the validation inputs
            calib = {k: v[:samples] for k, v in npz.items() if k != "labels"}
    np.savez(folder / "calib.npz", **calib)
    return folder / "calib.npz"


def peer_graph(tool: str, options: dict, fp32: Path, calib: Path, out: Path) -> Path | str:
    from peers import PeerError, available_peers, quantize_with_peer

    reason = available_peers().get(tool)
    if reason:
        return reason
    try:
        with open(out.with_suffix(".log"), "w") as log:
            quantize_with_peer(tool, fp32, calib, out, options=options, log=log)
    except PeerError as exc:
        return str(exc)
    return out


def _ov_model(path: Path):
    import openvino as ov

    return ov.Core().compile_model(str(path), "CPU", OV_CONFIG)


def ov_outputs(scorer, path: Path) -> list[np.ndarray]:
    """The graph's outputs on OpenVINO over the validation set, batch by batch as the scorer runs onnxruntime."""
    model = _ov_model(path)
    n = len(next(iter(scorer.inputs.values())))
    parts = []
    for i in range(0, n, scorer.batch):
        result = model({k: v[i : i + scorer.batch] for k, v in scorer.inputs.items()})
        parts.append([np.asarray(result[o]) for o in model.outputs])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def zoo_metric(config, scorer):
    """The metric as zoo_lib/metrics.py defines it (with per-sample parts), else deployc's built-in."""
    from zoo_lib import metrics

    name = config.data.metric
    return getattr(metrics, name.rsplit(":", 1)[1]) if ":" in name else scorer.metric.fn


class Rows:
    """One model's table rows, each scored on the same bootstrap resamples of its validation set."""

    def __init__(self, config, scorer):
        from zoo_lib.resample import Resampler

        self.scorer, self.fn = scorer, zoo_metric(config, scorer)
        self.sampler = Resampler(len(next(iter(scorer.inputs.values()))))
        self.fp32 = None

    def row(self, who: str, outs: list[np.ndarray], counts: dict, gate: str = "—") -> dict:
        scorer = self.scorer
        scored = self.sampler.score(self.fn, outs, scorer.reference if scorer.metric.similarity else scorer.targets)
        drift = scorer.metric.drift(scorer.reference_value, scored.value)
        return {"model": scorer.name, "who": who, "rest": "—", **counts, "value": scored.value, "drift": drift,
                "gate": gate, "scored": scored}  # fmt: skip

    def ort(self, who: str, graph: Path, gate: str = "—", as_written: bool = True) -> dict:
        """A graph run with onnxruntime (as_written: Q/DQ as written, deployc's TensorRT proxy; else its CPU int8
        kernels, as a CPU user runs them)."""
        from tensorrt_placement import qdq_counts

        return self.row(who, self.scorer.outputs(graph, as_written), qdq_counts(graph), gate)

    def ov(self, who: str, graph: Path, counts: dict) -> dict:
        return self.row(who, ov_outputs(self.scorer, graph), counts)

    def drifts(self, row: dict) -> np.ndarray:
        """The row's drift from fp32 on each resample."""
        return self.scorer.metric.drift(self.fp32["scored"].resampled, row["scored"].resampled)

    def settle(self, rows: list[dict]) -> None:
        """Each scored row's 95% interval of its drift, its flips against fp32 and their McNemar p-value."""
        from zoo_lib.resample import flips, interval, mcnemar_p

        for r in rows:
            if "scored" not in r:
                continue
            r["drift_ci"] = interval(self.drifts(r))
            r["flips"] = flips(r["scored"], self.fp32["scored"], self.scorer.metric.higher_is_better)
            binary = r["scored"].per_sample is not None and np.isin(r["scored"].per_sample, (0.0, 1.0)).all()
            r["mcnemar_p"] = mcnemar_p(*r["flips"]) if r["flips"] and binary else None

    def against(self, mine: dict, peers: list[dict]) -> tuple[str, str]:
        """The CI verdict of a deployc row against the int8 peers, and the paired interval against each."""
        from zoo_lib.resample import interval

        worse, better, shown = [], [], []
        for peer in peers:
            low, high = interval(self.drifts(mine) - self.drifts(peer))
            who = f"{peer['who']} on OpenVINO" if peer.get("alias") else peer["who"]  # an ONNX peer's file on both
            shown.append(f"{who} [{low:+.4f}, {high:+.4f}]")
            if low > 0:
                worse.append(who)
            better += [who] if high < 0 else []
        if worse:
            return f"LESS accurate than {', '.join(worse)} beyond the 95% CI", "; ".join(shown)
        beyond = " (more accurate than every int8 peer beyond it)" if len(better) == len(peers) else ""
        return f"at least as accurate within the 95% CI{beyond}", "; ".join(shown)


def fake_quantize_count(xml: Path) -> dict:
    import openvino as ov

    fq = sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(xml)).get_ops())
    return {"q": fq, "dq": fq}


def cpu_latency(scorer, graphs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Batch-1 latency / fp32-on-onnxruntime's of each CPU graph on each runtime it runs on (ONNX files: both;
    OpenVINO IR: OpenVINO), within the same interleaved rounds on one thread."""
    from deployc.core.ort import session
    from deployc.core.timing import interleaved

    one = {k: v[:1] for k, v in scorer.inputs.items()}
    runs = {}
    for who, path in graphs.items():
        if Path(path).suffix == ".onnx":
            runs[(who, "onnxruntime")] = lambda s=session(path, threads=1): s.run(None, one)
        try:  # a graph OpenVINO refuses (its row says why) gets no OpenVINO latency
            runs[(who, "openvino")] = lambda m=_ov_model(path).create_infer_request(): m.infer(one)
        except RuntimeError as exc:
            print(f"{who}: no OpenVINO latency: {str(exc).splitlines()[0]}", file=sys.stderr)
    rounds = interleaved({f"{w}|{r}": fn for (w, r), fn in runs.items()}, rounds=8, per_round=5, clock="thread_cpu")
    out: dict[str, dict[str, float]] = {}
    for who, runtime in runs:
        out.setdefault(who, {})[runtime] = rounds.ratio(f"{who}|{runtime}", "fp32|onnxruntime").median
    return out


def _ci(r: dict) -> str:
    low, high = r["drift_ci"]
    return f"[{low:+.4f}, {high:+.4f}]"


def _flips(r: dict) -> str:
    if r.get("flips") is None:
        return "—"
    worse, better = r["flips"]
    return f"{worse} / {better}" + (f" (p={r['mcnemar_p']:.2f})" if r.get("mcnemar_p") is not None else "")


def main(argv: list[str] | None = None) -> int:
    from tensorrt_placement import Scorer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="peers-int8-")))
    ap.add_argument(
        "--reuse",
        action="append",
        default=[],
        metavar="MODEL=BUILD_DIR",
        help="score an earlier deployc build of the same zoo config instead of building it again",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("DEPLOYC_CACHE_DIR", str(args.out / "pass-cache"))

    reused = {k: Path(v) for k, v in (r.split("=", 1) for r in args.reuse)}
    rows, verdicts = [], []
    for name in args.models.split(","):
        config, arts, folder = deployc_build(name, args.out, reused.get(name))
        fp32 = arts["onnx/fp32"]["file"]
        scorer = Scorer(config, folder / "data.npz", fp32, config.data.batch_size)
        calib = calibration_npz(folder, config.quantize.samples)
        table = Rows(config, scorer)
        table.fp32 = {**table.ort("fp32", fp32, as_written=False), "kind": "cpu", "file": fp32}
        model_rows = [table.fp32]
        for label, kind in (("onnx/int8", "cpu"), ("tensorrt/int8", "tensorrt")):
            art = arts.get(label)
            if art is None or art["file"] is None:
                print(f"{name}: deployc {label} not built: {art and art['gate'].get('reason')}", file=sys.stderr)
                continue
            trials = len(((art.get("details") or {}).get("remedies") or {}).get("trial_log") or []) or 1
            row = table.ort(f"deployc {label}", art["file"], art["gate"]["status"], as_written=kind != "cpu")
            model_rows.append({**row, "kind": kind, "file": art["file"], "trials": trials})
        peers = list(PEERS)
        if name in IGNORED_SCOPES:
            scope = {"preset": "MIXED", "ignored_scope": IGNORED_SCOPES[name]}
            peers.append(("NNCF MIXED + ignored scope on OpenVINO", "nncf", scope, "openvino"))
        for label, tool, options, kind in peers:
            suffix = ".xml" if tool == "nncf" else ".onnx"
            out = folder / f"{tool}{'-' + '-'.join(options) if options else ''}.int8{suffix}"
            graph = peer_graph(tool, options, fp32, calib, out)
            if isinstance(graph, str):
                print(f"{name}: {label} did not run: {graph}", file=sys.stderr)
                model_rows.append({"model": name, "who": label, "error": graph.splitlines()[0][:120]})
                continue
            try:  # a peer's graph a runtime refuses is that peer's failure, reported as its row
                if kind == "openvino":
                    row = table.ov(label, graph, fake_quantize_count(graph))
                else:
                    row = table.ort(label, graph, as_written=kind != "cpu")
            except Exception as exc:  # onnxruntime and OpenVINO raise their own error types
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                print(f"{name}: {label} could not be scored: {reason}", file=sys.stderr)
                model_rows.append({"model": name, "who": label, "error": reason[:160]})
                continue
            model_rows.append({**row, "kind": kind, "file": graph, "runtime": "openvino" if kind == "openvino" else ""})
        for r in [r for r in model_rows if r.get("kind") == "cpu" and "error" not in r]:  # ONNX CPU graphs on OpenVINO
            counts = {"q": r["q"], "dq": r["dq"]}
            try:
                on_ov = table.ov(r["who"], r["file"], counts)
            except Exception as exc:  # OpenVINO raises its own error types
                model_rows.append({"model": name, "who": f"{r['who']} on OpenVINO", "error": str(exc)[:160]})
                continue
            model_rows.append({**on_ov, "kind": "cpu", "file": r["file"],
                               "runtime": "openvino", "gate": r["gate"], "alias": True})  # fmt: skip
        built = [r for r in model_rows if "error" not in r]
        ratios = cpu_latency(scorer, {("fp32" if r["who"] == "fp32" else r["who"]): r["file"] for r in built
                                      if r["kind"] in ("cpu", "openvino") and not r.get("alias")})  # fmt: skip
        for r in built:
            r["bytes"] = sum(p.stat().st_size for p in (Path(r["file"]), Path(r["file"]).with_suffix(".bin"))
                             if p.is_file() and (p.suffix != ".bin" or Path(r["file"]).suffix == ".xml"))  # fmt: skip
            r["latency"] = ratios.get("fp32" if r["who"] == "fp32" else r["who"])
        table.settle(built)
        ours = [r for r in built if r["who"].startswith("deployc") and not r.get("alias")]  # as shipped and gated
        peers = [r for r in built if r["who"] not in ("fp32",) and not r["who"].startswith("deployc")]
        # a peer that wrote no Q/DQ shipped no int8 model (Model Optimizer on g2p: the fp32/fp16 graph as it was):
        # listed, and left out of the int8 verdict, which compares each shipped deployc int8 artifact
        int8_peers = [r for r in peers if r["q"] or r["dq"]]
        if ours and int8_peers:
            theirs = min(int8_peers, key=lambda r: r["drift"])
            for mine in ours:
                raw = "at least as accurate" if mine["drift"] <= theirs["drift"] + 1e-9 else "LESS accurate"
                within, against = table.against(mine, int8_peers)
                verdicts.append(
                    f"{name}: {mine['who']} drift {mine['drift']:+.4f} {_ci(mine)} vs best int8 peer {theirs['who']} "
                    f"{theirs['drift']:+.4f} {_ci(theirs)}: raw rule: {raw}; {within} "
                    f"(deployc minus peer, 95% CI: {against})"
                )
        for r in peers:
            if not (r["q"] or r["dq"]):
                verdicts.append(
                    f"{name}: {r['who']} quantized nothing (0 Q/DQ, drift {r['drift']:+.4f}): no int8 model"
                )
        for r in model_rows:  # the resamples stay here: rows.json keeps what the table shows
            r.pop("scored", None)
        rows += model_rows
        # each model's rows as they finish: a later model's crash does not lose the earlier ones
        (args.out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
        print(f"[peers] {name} done", file=sys.stderr, flush=True)

    fp32_bytes = {r["model"]: r["bytes"] for r in rows if r.get("who") == "fp32" and not r.get("alias")}
    print(
        "| model | quantizer | scored on | Q | DQ | metric | drift vs fp32 | paired 95% CI of drift | samples worse / "
        "better than fp32 | size vs fp32 | latency vs fp32 on onnxruntime: onnxruntime / OpenVINO | deployc gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['who']} | — | — | — | — | failed: {r['error']} | — | — | — | — | — |")
            continue
        lat = r.get("latency") or {}
        latency = " / ".join(f"{lat[k]:.2f}×" if k in lat else "—" for k in ("onnxruntime", "openvino"))
        latency = latency if lat else "— (TensorRT graph)"
        gate = f"{r['gate']} ({r['trials']} trial{'s' if r['trials'] > 1 else ''})" if "trials" in r else r["gate"]
        runtime = r.get("runtime") or ("onnxruntime" if r["kind"] != "tensorrt" else "Q/DQ as written (proxy)")
        print(
            f"| {r['model']} | {r['who']} | {runtime} | {r['q']} | {r['dq']} | {r['value']:.4f} | {r['drift']:+.4f} | "
            f"{_ci(r)} | {_flips(r)} | {r['bytes'] / fp32_bytes[r['model']]:.2f}× | {latency} | {gate} |"
        )
    print("\n" + "\n".join(verdicts))
    print(f"\nfiles: {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
