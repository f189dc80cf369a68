"""deployc's one way to open an onnxruntime session (core/ort.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from deployc.core.ort import physical_cores, session


def _allowed(task: Path) -> str:
    status = (task / "status").read_text().splitlines()
    return next(line.split(":", 1)[1].strip() for line in status if line.startswith("Cpus_allowed_list"))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: there is no core to pin a worker to")
def test_sessions_left_at_the_default_thread_count_do_not_pin_their_workers_to_one_core():
    """Left at 0 threads, onnxruntime pins each session's worker to core 1: every session of a build piled onto
    one core, and a latency read 3.7 or 2.3 ms from one build to the next on 2 cores."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = {p.name for p in Path("/proc/self/task").iterdir()}
    sessions = [session(model) for _ in range(2)]
    for s in sessions:
        assert s.run(None, {"x": np.ones((64, 64), np.float32)})[0].sum() == 64 * 64
    workers = [p for p in Path("/proc/self/task").iterdir() if p.name not in before]
    assert len(workers) >= physical_cores() - 1  # onnxruntime's default count: one thread per core
    mine = _allowed(Path(f"/proc/self/task/{threading.get_native_id()}"))
    assert all(_allowed(w) == mine for w in workers), [_allowed(w) for w in workers]


def test_physical_cores_counts_cores_not_hyper_threads():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
