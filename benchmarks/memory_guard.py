"""Peak RSS of a run whose activations the graph's shapes underestimate, sized by the estimate alone (issue 25's first
round) and through memory.Guard (this round): a graph whose ConstantOfShape makes a tensor of `--mb` MB a sample,
its length a value of the data, so shape inference cannot size it and the estimate sees a few bytes a sample.

    .venv/bin/python benchmarks/memory_guard.py [--mb 24] [--samples 64] [--budget 256MB] [--batch 64]

Each row is a fresh subprocess (its peak RSS: ru_maxrss of os.wait4) that opens an onnxruntime session, runs one
sample (as validation opens its runtime), then every sample in batches: "estimate" at memory.batch_for(estimate),
"guard" through Dataset.within_budget. Rows give the batches run, seconds, and whether the outputs equal the
one-sample-at-a-time run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RUN = """
import json, sys, time
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from deployc.core import memory
from deployc.core.ort import session
from deployc.data.dataset import Dataset
from deployc.data.reference import run_batched
mode, mb, samples, budget, wanted = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
MB = 1 << 20
nodes = [
    helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
    helper.make_node("Mul", ["s", "per_unit"], ["n_float"]),
    helper.make_node("Cast", ["n_float"], ["n"], to=TensorProto.INT64),
    helper.make_node("Reshape", ["n", "one"], ["shape"]),
    helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
    helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
    helper.make_node("Mul", ["total", "zero"], ["nothing"]),
    helper.make_node("Add", ["x", "nothing"], ["y"]),
]
inits = [numpy_helper.from_array(np.float32(MB // 4), "per_unit"), numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.float32(0), "zero")]
graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])], inits)
proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
x = np.full((samples, 1), float(mb), np.float32)
data = Dataset({"x": x}, None, "synthetic")
sess = session(proto)
run = lambda feed: sess.run(None, feed)
row = {"mode": mode}
t0, cpu0 = time.perf_counter(), time.process_time()
with memory.applied(memory.Budget(memory.parse_size(budget), "build.max_memory")):
    first = next(data.batches(1))[0]
    if mode == "estimate":
        size = memory.batch_for(memory.graph_activations(proto, first).peak, wanted, "a run")
        run(first)
        outputs = run_batched(run, data, size)
        row["batch_sizes"] = [size]
    else:
        guard = data.within_budget(lambda feed: memory.graph_activations(proto, feed), wanted, "a run")
        run(first)
        guard.warmed(1)
        outputs = run_batched(run, data, guard)
        row["batch_sizes"] = guard.sizes
row["seconds"], row["cpu_seconds"] = time.perf_counter() - t0, time.process_time() - cpu0
row["outputs_equal"] = bool(np.array_equal(outputs[0], x))
print(json.dumps(row))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=24)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--budget", default="256MB")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    for mode in ("estimate", "guard"):
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", RUN, mode, str(args.mb), str(args.samples), args.budget, str(args.batch)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        assert proc.stdout is not None
        lines = proc.stdout.read().strip().splitlines()
        row = json.loads(lines[-1]) if lines else {"mode": mode, "exit": os.waitstatus_to_exitcode(status)}
        row.update(
            peak_rss_mb=round(usage.ru_maxrss / 1024),
            child_wall_seconds=round(time.perf_counter() - t0, 1),
            child_cpu_seconds=round(usage.ru_utime + usage.ru_stime, 1),
            budget=args.budget,
            hidden_mb_per_sample=args.mb,
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
