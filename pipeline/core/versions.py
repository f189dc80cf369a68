"""Versions of the libraries that make an artifact: recorded in manifests and part of every cache key."""

from __future__ import annotations

import importlib.metadata
import platform

_LIBRARIES = (
    "deployc",
    "torch",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "onnx-ir",
    "onnxsim",
    "litert-torch",
    "ai-edge-quantizer",
    "ai-edge-litert",
    "tensorrt",
    "torch-pruning",
)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
