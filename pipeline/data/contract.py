"""The input contract: every array a data source yields is checked against the declared model inputs here."""

from __future__ import annotations

import numpy as np

from deployc.core.state import TensorSpec
from deployc.data.dataset import batch_axis, sample_shape
from deployc.errors import UsageError


def fit_to_spec(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Check `arr` (samples first) against the input spec (fixed axes must match), reshaping digits-style images."""
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise UsageError(f"{where}: input '{spec.name}' has non-numeric dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UsageError(f"{where}: input '{spec.name}' contains NaN or Inf")
    if batch_axis(spec) is None:
        values = np.unique(arr)
        if values.size != 1:
            raise UsageError(
                f"{where}: input '{spec.name}' is a scalar (shape []) the model takes once per batch; its samples "
                f"must all hold one value, found {values.size} ({', '.join(map(str, values[:3]))}...)"
            )
        return np.asarray(values[0], dtype=spec.dtype)
    want = sample_shape(spec)
    if arr.ndim == 0 or len(arr) == 0:
        raise UsageError(f"{where}: no samples for input '{spec.name}'")
    got = arr.shape[1:]
    fixed_ok = len(got) == len(want) and all(isinstance(w, str) or w == g for w, g in zip(want, got))
    if not fixed_ok:
        if all(isinstance(w, int) for w in want) and int(np.prod(got)) == int(np.prod(want)) and want:
            arr = arr.reshape((len(arr),) + tuple(want))
        else:
            raise UsageError(
                f"{where}: samples for input '{spec.name}' have shape {list(got)} per sample, "
                f"the model input expects {list(want)} (samples first; the batch axis is not part of it)"
            )
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
    if np.issubdtype(cast.dtype, np.floating) and not np.isfinite(cast).all():  # e.g. float64 1e39 -> float32 inf
        raise UsageError(f"{where}: input '{spec.name}' holds values beyond the range of {spec.dtype}")
    return cast


def as_samples(a: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """One factory item's array with samples first: a single sample gets a leading axis of 1."""
    if batch_axis(spec) is None or a.ndim == 0:
        return a.reshape(1)
    return a[None] if a.ndim == len(sample_shape(spec)) else a
