"""onnxruntime's quantize_static computes every weight's scales and int8 values again on each call (a 224² CNN:
~6,700 compute_data_quant_params calls, one per output channel), and every remedy trial quantizes the same weights
with the same settings. `memoized_weights()` memoizes its two weight functions, patched into its QDQ quantizer for
the duration of one call: a call with the same arguments returns a copy of what the first computed, so the bytes are
the same. Hand-written because onnxruntime offers no hook for it; when its internals move, nothing is patched."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

_PARAMS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # a channel's values + settings -> (zero point, scale)
_WEIGHTS: dict[tuple, Any] = {}  # a weight's values + its quantizer -> its quantized TensorProto
_PARAMS_KEPT = 1 << 19  # entries (a few hundred bytes each)
_WEIGHT_BYTES_KEPT = 256 << 20  # int8 weights kept (a model's weights in a few quantizer variants)
_PARAM_KEYWORDS = {"reduce_range", "min_real_range", "rmin_override", "rmax_override"}


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _array_key(a: Any) -> tuple:
    a = np.asarray(a)
    return (a.dtype.str, a.shape, _digest(np.ascontiguousarray(a).tobytes()))


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float))


@contextlib.contextmanager
def memoized_weights() -> Iterator[None]:
    """Within the block, onnxruntime's QDQ quantizer reads weights' quantization parameters and int8 values from
    the memo (see the module docstring)."""
    try:
        from onnxruntime.quantization import qdq_quantizer as quantizer
    except ImportError:
        yield
        return
    params = getattr(quantizer, "compute_data_quant_params", None)
    weight = getattr(quantizer, "quantize_onnx_initializer", None)
    if params is None or weight is None:
        yield
        return

    def cached_params(*args: Any, **kwargs: Any) -> Any:
        if len(args) != 3 or set(kwargs) - _PARAM_KEYWORDS or not all(map(_scalar, kwargs.values())):
            return params(*args, **kwargs)
        data, quant_type, symmetric = args
        key = (_array_key(data), int(quant_type), bool(symmetric), *sorted(kwargs.items()))
        if key not in _PARAMS:
            if len(_PARAMS) >= _PARAMS_KEPT:
                _PARAMS.clear()
            _PARAMS[key] = params(*args, **kwargs)
        zero_point, scale = _PARAMS[key]
        return zero_point.copy(), scale.copy()

    def cached_weight(proto: Any, quant_type: Any, zero_point: Any, scale: Any, *rest: Any, **kwargs: Any) -> Any:
        import onnx

        values = proto.raw_data or proto.SerializeToString()
        extra = (*rest, *sorted(kwargs.items()))
        if not all(map(_scalar, extra[: len(rest)])) or not all(_scalar(v) for _, v in kwargs.items()):
            return weight(proto, quant_type, zero_point, scale, *rest, **kwargs)
        weight_key = (proto.name, proto.data_type, tuple(proto.dims), _digest(values))
        key = (weight_key, int(quant_type), _array_key(zero_point), _array_key(scale), extra)
        if key not in _WEIGHTS:
            if sum(len(t.raw_data) for t in _WEIGHTS.values()) > _WEIGHT_BYTES_KEPT:
                _WEIGHTS.clear()
            _WEIGHTS[key] = weight(proto, quant_type, zero_point, scale, *rest, **kwargs)
        out = onnx.TensorProto()
        out.CopyFrom(_WEIGHTS[key])
        return out

    quantizer.compute_data_quant_params, quantizer.quantize_onnx_initializer = cached_params, cached_weight
    try:
        yield
    finally:
        quantizer.compute_data_quant_params, quantizer.quantize_onnx_initializer = params, weight
