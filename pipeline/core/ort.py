"""onnxruntime helpers every part of deployc shares: one way to open a CPU session, one calibration reader."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Batches(Protocol):
    """What the calibration reader iterates: deployc.data's Dataset, or anything that batches like it."""

    def batches(self, size: Any) -> Iterator[tuple[dict[str, np.ndarray], Any]]: ...  # int, or a memory.Guard


def session(model: Any, threads: int | None = None, optimize: bool = True, spin: bool = True) -> Any:
    """An onnxruntime CPU session for a model path, serialized bytes or a ModelProto.

    optimize=False keeps every named tensor (per-layer comparisons need the graph as written);
    threads=None: one per physical core, as onnxruntime's default, without its pinning (below); spin=False: idle
    intra-op threads sleep instead of spinning, for runs that compute statistics over many batches (on a shared
    2-core machine spinning took 20-45% more CPU for the same wall time); artifacts keep onnxruntime's default
    spinning, as deployed and timed.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    # always a number: left at 0, onnxruntime pins each session's workers to cores 1..n-1, so every session of a
    # build (validation, calibration, the run ahead) piles its workers onto the same core; latency then read 3.7 or
    # 2.3 ms from one build to the next on 2 cores. The same number of threads as the default: the same values
    opts.intra_op_num_threads = threads or physical_cores()
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


@functools.cache
def physical_cores() -> int:
    """The physical cores this process may run on: onnxruntime's default intra-op thread count (one per core, not
    per hyper-thread)."""
    from deployc.core.timing import available_cpus

    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # no affinity masks (macOS): one thread per CPU, as available_cpus counts them
        return available_cpus()
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no topology (some containers): one thread per CPU
            return len(cpus)
    return max(len(cores), 1)


class CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader over a Dataset, in small batches."""

    def __init__(self, data: Batches, batch: Any = 16, names: set[str] | None = None):
        self._it: Iterator[dict[str, np.ndarray]] = (
            {k: v for k, v in x.items() if names is None or k in names} for x, _ in data.batches(batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:  # onnxruntime >= 1.20 also iterates the reader
        return iter(self.get_next, None)
