"""Peak RSS of quantize.fp16's finiteness check (finite_fp16 on sample_feeds' samples) on a graph with large
activations, each run in a fresh subprocess: this tree under several memory budgets and (--before SRC) another
deployc source tree, such as the commit before the check streamed (`git archive REV | tar -x -C SRC`).

    nice -n 10 .venv/bin/python benchmarks/fp16_check_memory.py [--channels 16] [--side 512] [--depth 16]
        [--samples 4] [--budgets 256MB,1GB,default] [--before SRC] [--only this|before] [--onnx M --npz D]

The graph: x[N, C, S, S] through `depth` elementwise nodes (Mul, Add, Relu, ...), two of which exceed fp16's range,
so the check keeps nodes float32 and its verdict is not trivial: C*S*S*4 bytes per node output and sample (16 MB at
the defaults). --onnx/--npz: a real model and its samples instead (e.g. the zoo's DNSMOS). A row gives the child's peak RSS (ru_maxrss), its seconds and the check's result (nodes kept, finite).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_time import BEFORE_SHIM

CHILD = """
import json, resource, sys, time
import numpy as np
import onnx
from onnx import TensorProto, helper
channels, side, depth, samples, budget = (int(a) for a in sys.argv[1:6])
model, npz = sys.argv[6:8]
from deployc.core import memory
from deployc.data.dataset import Dataset
from deployc.passes.fp16 import finite_fp16
from deployc.passes.onnx_numerics import sample_feeds

nodes, last, inits = [], "x", []
for i in range(depth):
    out = f"t{i}"
    if i in (depth // 3, 2 * depth // 3):  # beyond 65504 here, back in range after the next node
        inits.append(helper.make_tensor(f"k{i}", TensorProto.FLOAT, [], [1.0e5]))
        nodes.append(helper.make_node("Mul", [last, f"k{i}"], [out]))
    elif i - 1 in (depth // 3, 2 * depth // 3):
        inits.append(helper.make_tensor(f"k{i}", TensorProto.FLOAT, [], [1.0e-5]))
        nodes.append(helper.make_node("Mul", [last, f"k{i}"], [out]))
    else:
        op = ("Relu", "Sigmoid", "Tanh", "Abs")[i % 4]
        nodes.append(helper.make_node(op, [last], [out]))
    last = out
shape = ["N", channels, side, side]
graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(last, TensorProto.FLOAT, shape)], inits)
proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
x = np.random.default_rng(0).standard_normal((samples, channels, side, side)).astype(np.float32) * 4
data = Dataset({"x": x}, None, "random")
if model:  # a real model and its samples: the npz array named like each graph input
    proto, arrays = onnx.load(model), np.load(npz)
    data = Dataset({i.name: arrays[i.name][:samples] for i in proto.graph.input}, None, npz)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
with memory.applied(memory.resolve(budget or None)) as b:
    result = finite_fp16(proto, sample_feeds(proto, data, samples))
print(json.dumps({"budget": str(b), "seconds": round(time.perf_counter() - start, 2),
                  "rss_before_check_bytes": base, "kept": sorted(result.kept), "finite": result.finite}))
"""


def run(args: argparse.Namespace, budget: str, src: str | None) -> dict:
    from deployc.core.memory import parse_size

    size = 0 if budget == "default" else parse_size(budget)
    shape = [str(v) for v in (args.channels, args.side, args.depth, args.samples, size)] + [args.onnx, args.npz]
    if src is None:
        cmd = [sys.executable, "-c", CHILD, *shape]
    else:  # the shim's finder imports deployc from SRC; then the check instead of the CLI
        shim = BEFORE_SHIM.rsplit("from deployc.cli", 1)[0]
        cmd = [sys.executable, "-c", shim + CHILD, src, *shape]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    code = os.waitstatus_to_exitcode(status)
    row = {"tree": src or "this", "budget_arg": budget, "exit": code, "peak_rss_bytes": usage.ru_maxrss * 1024}
    row.update(json.loads(out.strip().splitlines()[-1]) if code == 0 else {})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--onnx", default="", help="a real model instead of the made-up graph (with --npz)")
    parser.add_argument("--npz", default="", help="its samples: an array named like each graph input")
    parser.add_argument("--budgets", default="256MB,1GB,default", help="this tree's runs, comma-separated")
    parser.add_argument("--before", help="another deployc source tree, run once (its own batching)")
    parser.add_argument("--only", choices=["this", "before"], help="run one tree only")
    args = parser.parse_args()
    rows = []
    if args.before and args.only != "this":
        rows.append(run(args, "default", args.before))
    if args.only != "before":
        rows += [run(args, b, None) for b in args.budgets.split(",")]
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
