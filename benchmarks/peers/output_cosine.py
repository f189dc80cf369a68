"""Per-sample cosine of each int8 graph's first output to the fp32 graph's, on the validation inputs, for a model
folder written by benchmarks/peers_int8.py (a continuous view where task metrics move by one sample):

    .venv/bin/python benchmarks/peers/output_cosine.py /work/runs/wt26g/peers2/resemblyzer

deployc's and Model Optimizer's TensorRT graphs run as written (onnxruntime without graph optimizations, as the
proxy scores them); NNCF's IR on OpenVINO (f32 inference precision). Prints mean / min per graph.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from deployc.core.ort import session


def main() -> None:
    folder = Path(sys.argv[1])
    model = folder.name
    fp32 = folder / "build-peers" / "onnx" / f"{model}.fp32.onnx"
    with np.load(folder / "data.npz") as npz:
        feeds = {i.name: npz[i.name] for i in session(fp32).get_inputs()}
    n = len(next(iter(feeds.values())))

    def batches(run) -> np.ndarray:
        return np.concatenate([run({k: v[i : i + 16] for k, v in feeds.items()}) for i in range(0, n, 16)])

    def on_ort(path: Path, optimize: bool = True) -> np.ndarray:
        sess = session(path, optimize=optimize)
        return batches(lambda feed: sess.run(None, feed)[0])

    def on_openvino(path: Path) -> np.ndarray:
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return batches(lambda feed: next(iter(compiled(feed).values())))

    ref = on_ort(fp32).reshape(n, -1)
    graphs = {
        "deployc onnx/int8": lambda: on_ort(folder / "build-peers" / "onnx" / f"{model}.int8.onnx"),
        "deployc tensorrt/int8": lambda: on_ort(folder / "build-peers" / "tensorrt" / f"{model}.int8.onnx", False),
        "onnxruntime quantize_static": lambda: on_ort(folder / "ort.int8.onnx"),
        "Model Optimizer (rest fp16)": lambda: on_ort(folder / "modelopt.int8.onnx", False),
        "NNCF default": lambda: on_openvino(folder / "nncf.int8.xml"),
        "NNCF MIXED": lambda: on_openvino(folder / "nncf-preset.int8.xml"),
    }
    for label, run in graphs.items():
        try:
            got = run().reshape(ref.shape)
        except Exception as exc:  # a missing or failed peer: say so, keep the others
            print(f"{label}: not scored ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"{label}: output cosine to fp32 mean {cos.mean():.4f} min {cos.min():.4f}")


if __name__ == "__main__":
    main()
