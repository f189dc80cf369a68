"""Small numeric checks shared by the loader and the ONNX passes."""

from __future__ import annotations

from typing import Any

import numpy as np

from deployc.errors import UsageError


def check_onnx_no_nan(proto: Any, where: str) -> None:
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():  # ±inf is a valid constant (clamp bounds)
            raise UsageError(f"{where}: initializer '{init.name}' contains NaN")
