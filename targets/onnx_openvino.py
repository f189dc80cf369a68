"""OpenVINO as the onnx target's second CPU runtime (targets.onnx.runtimes: [onnxruntime, openvino], extra `openvino`):
whether it runs here, its compiled model of an ONNX file, and the row of an artifact it validates.

Rows are named '<precision>@openvino'. With int8_placement: auto the int8 row is a file of its own, with the Q/DQ
OpenVINO fuses (passes/openvino_qdq.py); every other row is a twin: the onnxruntime row's file, run on OpenVINO.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

from deployc.compiler.contracts import Artifact

RUNTIME = "openvino"
SUFFIX = f"@{RUNTIME}"  # precision suffix of every row OpenVINO validates


def openvino_missing() -> str | None:
    """None when OpenVINO can run here, else why not."""
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'deployc[openvino]')"
    return None


def openvino_version() -> str:
    return "" if openvino_missing() else importlib.metadata.version("openvino")


def openvino_details() -> dict[str, Any]:
    """How OpenVINO runs a row (what its gate and latency measured)."""
    return {"inference_precision": "f32", "device": "CPU"}


def openvino_model(path: str, threads: int | None) -> Any:
    """An OpenVINO CPU model of an ONNX file; f32 inference precision: on CPUs with bf16 units OpenVINO would
    otherwise run the float part in bf16, which the gate would then measure instead of the artifact."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(path, "CPU", config)


def on_openvino(art: Artifact) -> Artifact:
    """The twin of an onnx artifact that OpenVINO validates: the same file, its own gate and latency."""
    return Artifact(
        art.target,
        f"{art.precision}{SUFFIX}",
        art.path,
        RUNTIME,
        openvino_version(),
        inputs=art.inputs,
        outputs=art.outputs,
        details={
            "same_file_as": art.label,
            **openvino_details(),
            **{k: art.details[k] for k in ("int8_coverage", "int8_placement") if k in art.details},
        },
        skipped=openvino_missing(),
        history=art.history,
    )
