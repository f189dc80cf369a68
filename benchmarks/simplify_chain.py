"""Time each simplify stage on an ONNX chain of N nodes (issue 23: simplify grew ~n^2.3, 513 s at 20 000 nodes).

    nice -n 10 .venv/bin/python benchmarks/simplify_chain.py --nodes 1000,2000,4000 [--pass]

Per stage (onnxsim, optimizer, rewrite) the wall time; with --pass, the whole `simplify` stage function as the pass
runs it, wall and process CPU time (stages past SimplifyConfig.max_nodes are skipped with a logged reason;
--max-nodes 1000000000 runs every stage, as before the bound)."""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from onnx import TensorProto, helper


def chain(n: int) -> onnx.ModelProto:
    """x -> (Add c_i -> Relu) repeated: n nodes, each with its own small initializer."""
    nodes, inits, prev = [], [], "x"
    for i in range(n // 2):
        inits.append(helper.make_tensor(f"c{i}", TensorProto.FLOAT, [8], np.full(8, 0.01, np.float32)))
        nodes.append(helper.make_node("Add", [prev, f"c{i}"], [f"a{i}"]))
        nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["batch", 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    from deployc.passes.onnx_numerics import sample_feeds
    from deployc.passes.simplify import STAGES, SimplifyConfig, simplify_stages

    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="1000,2000,4000")
    ap.add_argument("--pass", dest="whole", action="store_true", help="time simplify_stages as the pass runs it")
    ap.add_argument(
        "--max-nodes", type=int, default=None, help="with --pass: SimplifyConfig.max_nodes (huge: as before)"
    )
    args = ap.parse_args()
    for n in [int(x) for x in args.nodes.split(",")]:
        proto = chain(n)
        if args.whole:
            config = SimplifyConfig() if args.max_nodes is None else SimplifyConfig(max_nodes=args.max_nodes)
            t, cpu = time.perf_counter(), time.process_time()
            _, stages = simplify_stages(proto, config, sample_feeds(proto, None))
            wall, cpu = time.perf_counter() - t, time.process_time() - cpu
            print(f"n={n}: simplify {wall:.2f} s wall, {cpu:.2f} s CPU; {stages}", flush=True)
            continue
        for name, stage in STAGES.items():
            t = time.perf_counter()
            try:
                stage(onnx.ModelProto.FromString(proto.SerializeToString()))
                status = "ok"
            except Exception as exc:
                status = type(exc).__name__
            print(f"n={n} {name}: {time.perf_counter() - t:.2f} s ({status})", flush=True)


if __name__ == "__main__":
    main()
