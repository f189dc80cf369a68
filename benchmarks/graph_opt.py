"""Seed table 4.2 — graph optimisation, measured: the same model unoptimised vs graph-optimised
(onnxsim + onnxscript, then onnxruntime's offline optimisation) vs TorchScript / torch.compile.

    .venv/bin/python benchmarks/graph_opt.py [--model resnet18|digits] [--runs 50] [--no-compile] [--json t.json]

One process, batch 1, warm-up before timing; every variant's output is compared with torch eager
(max abs error). --json writes the table as {title, header, rows}, the shape report.html renders.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.timing import interleaved

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere: the repo root holds passes/


def model_and_input(name: str) -> tuple[Any, np.ndarray]:
    import torch

    torch.manual_seed(0)
    if name == "digits":
        from deployc.data.sources import digits_arrays
        from deployc.examples.digits_cnn import pretrained

        return pretrained().eval(), digits_arrays("test")[0][:1]
    from deployc.examples.models import ResNet18

    return ResNet18().eval(), np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


def ort_session(path: Path, level: str, save_to: Path | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    if save_to is not None:
        opts.optimized_model_filepath = str(save_to)  # ORT's offline mode: optimise once, save, load later
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["resnet18", "digits"], default="resnet18")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles C++; slow on 2 cores)")
    ap.add_argument("--json", type=Path, help="also write the table as {title, header, rows}")
    args = ap.parse_args(argv)

    import onnx
    import torch

    from deployc.core.state import ModelState, TensorSpec
    from deployc.outputs.report import human_bytes
    from deployc.passes.export import export_onnx
    from deployc.passes.onnx_util import op_counts
    from deployc.passes.simplify import simplify_proto

    model, x = model_and_input(args.model)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        ref = model(xt).numpy()
    rows: list[dict[str, Any]] = []
    runners: dict[str, Callable[[], Any]] = {}  # timed together at the end, in interleaved rounds

    def add(variant: str, run: Callable[[], Any], setup_s: float, nodes: Any = "—", size: int | None = None) -> None:
        out = np.asarray(run())
        runners[variant] = run
        rows.append(
            {
                "variant": variant,
                "nodes": nodes,
                "size": size,
                "setup_s": setup_s,
                "err": float(np.max(np.abs(out.reshape(ref.shape) - ref))),
            }
        )

    def torch_run(m: Any) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return m(xt).numpy()

        return run

    add("torch eager fp32", torch_run(model), 0.0)
    try:
        t0 = time.perf_counter()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript is deprecated in favour of torch.export; still measured
            scripted = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, xt)))
        add("TorchScript (trace + freeze + optimize_for_inference)", torch_run(scripted), time.perf_counter() - t0)
    except Exception as exc:
        rows.append({"variant": "TorchScript", "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
    if not args.no_compile:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(model)
            with torch.inference_mode():
                compiled(xt)  # compilation happens on the first call
            add("torch.compile (inductor, default mode)", torch_run(compiled), time.perf_counter() - t0)
        except Exception as exc:
            rows.append(
                {"variant": "torch.compile", "skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
            )

    state = ModelState(
        module=model, inputs=(TensorSpec("image", ("batch",) + x.shape[1:]),), facts=frozenset({"torch"})
    )
    with tempfile.TemporaryDirectory(prefix="graph-opt-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            plain = export_onnx(model, state)
        t_export = time.perf_counter() - t0
        paths = {"plain": work / "plain.onnx", "simplified": work / "simplified.onnx", "offline": work / "offline.onnx"}
        onnx.save(plain, paths["plain"])
        t0 = time.perf_counter()
        simplified = simplify_proto(plain)
        t_simplify = time.perf_counter() - t0
        onnx.save(simplified, paths["simplified"])
        t0 = time.perf_counter()
        ort_session(paths["simplified"], "ORT_ENABLE_ALL", save_to=paths["offline"])
        t_offline = time.perf_counter() - t0
        feed = {"image": x}

        def ort_variant(label: str, key: str, level: str, setup: float, proto: Any = None) -> None:
            sess = ort_session(paths[key], level)
            nodes = sum(op_counts(proto or onnx.load(str(paths[key]))).values())
            add(label, lambda: sess.run(None, feed)[0], setup, nodes, paths[key].stat().st_size)

        ort_variant("ORT, plain export, no graph optimisation", "plain", "ORT_DISABLE_ALL", t_export, plain)
        ort_variant("ORT, plain export, online optimisation (ORT default)", "plain", "ORT_ENABLE_ALL", t_export, plain)
        ort_variant(
            "ORT, onnxsim + onnxscript, no ORT optimisation",
            "simplified",
            "ORT_DISABLE_ALL",
            t_export + t_simplify,
            simplified,
        )
        ort_variant(
            "ORT, onnxsim + onnxscript + ORT offline optimisation",
            "offline",
            "ORT_DISABLE_ALL",
            t_export + t_simplify + t_offline,
        )

    rounds = interleaved(runners, rounds=10, per_round=max(1, args.runs // 10))
    eager = "torch eager fp32"
    header = ["variant", "nodes", "size", "p50 ms", "IQR ms", "p90 ms", "× eager", "stable", "setup s", "max abs diff"]
    table_rows = []
    for r in rows:
        if "skipped" in r:
            table_rows.append([r["variant"], "—", "—", f"skipped: {r['skipped']}"] + ["—"] * 6)
            continue
        t = rounds.times[r["variant"]]
        table_rows.append(
            [
                r["variant"],
                r["nodes"],
                human_bytes(r["size"]),
                f"{t.median:.3f}",
                f"{t.iqr:.3f}",
                f"{rounds.percentile(r['variant'], 90):.3f}",
                f"{rounds.ratio(r['variant'], eager).median:.3f}",
                "unstable" if rounds.unstable(r["variant"], eager) else "yes",
                f"{r['setup_s']:.1f}",
                f"{r['err']:.2e}",
            ]
        )
    title = (
        f"4.2 Graph optimisation — {args.model}, batch 1, input {list(x.shape)}, {torch.get_num_threads()} torch "
        f"threads, {args.runs} runs per variant in interleaved rounds (ratios within a round), load average "
        f"{rounds.load_before:.1f} before, {rounds.load_after:.1f} after"
    )
    print(f"{title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in table_rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if args.json:
        args.json.write_text(json.dumps({"title": title, "header": header, "rows": table_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
