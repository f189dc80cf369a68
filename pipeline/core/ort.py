"""onnxruntime helpers every part of deployc shares: one way to open a CPU session, one calibration reader."""

from __future__ import annotations

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
    threads=None lets onnxruntime use every core; spin=False: idle intra-op threads sleep instead of spinning, for
    runs that compute statistics over many batches (on a shared 2-core machine spinning took 20-45% more CPU for
    the same wall time); artifacts keep onnxruntime's default, as deployed and timed.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # warnings about unused initializers etc. are not the user's business
    if isinstance(model, Path):
        model = str(model)
    elif not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


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
