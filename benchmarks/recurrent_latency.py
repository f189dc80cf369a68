"""Batch-1 latency of int8 artifacts whose LSTM/GRU were rewritten (quantize.recurrent: scan or unroll) against
their fp32 twin, on onnxruntime and on OpenVINO, in the same interleaved rounds (1 thread, thread CPU clock).

    DEPLOYC_ZOO_CACHE=... python benchmarks/zoo.py --models resemblyzer --out /tmp/zoo   # or any deployc build
    python benchmarks/recurrent_latency.py BUILD_DIR/onnx/resemblyzer.fp32.onnx BUILD_DIR/onnx/resemblyzer.int8.onnx \\
        [OTHER_BUILD/onnx/resemblyzer.int8.onnx ...] --data /tmp/zoo/resemblyzer/data.npz   # int8 labelled int8, int8_2...

Needs `openvino` (pip install 'deployc[openvino]') for the OpenVINO rows; without it only onnxruntime is timed.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
from pathlib import Path

import numpy as np
import onnx

from deployc.core.ort import session
from deployc.core.timing import interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32", type=Path)
    ap.add_argument("int8", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True, help="npz holding the model inputs by name")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    names = [i.name for i in onnx.load(str(args.fp32), load_external_data=False).graph.input]
    with np.load(args.data) as npz:
        feed = {n: npz[n][:1] for n in names}
    runs = {}
    int8 = [("int8" if k == 0 else f"int8_{k + 1}", path) for k, path in enumerate(args.int8)]
    for label, path in (("fp32", args.fp32), *int8):
        ops = collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
        print(f"{label}: {sum(ops.values())} nodes, {dict(ops.most_common(6))}")
        runs[f"{label} onnxruntime"] = lambda s=session(path, threads=1): s.run(None, feed)
        if importlib.util.find_spec("openvino") is not None:
            import openvino as ov

            config = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
            request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
            runs[f"{label} openvino"] = lambda r=request: r.infer(feed)
    rounds = interleaved(runs, rounds=args.rounds, per_round=3, clock="thread_cpu")
    print("| artifact | runtime | ms (median, thread CPU) | vs fp32 on onnxruntime |\n|---|---|---|---|")
    for key, stats in rounds.times.items():
        label, runtime = key.split()
        ratio = rounds.ratio(key, "fp32 onnxruntime").median
        print(f"| {label} | {runtime} | {stats.median:.2f} | {ratio:.2f}× |")
    print(f"load average before/after: {rounds.load_before} / {rounds.load_after}")


if __name__ == "__main__":
    main()
