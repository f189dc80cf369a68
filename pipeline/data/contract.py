"""The input contract: every array a data source yields (digits, .npz, factories; validation, calibration, train;
the build's, bench's and explain's) is checked against the declared model inputs here, and nowhere else.

Data must match the declared inputs exactly: samples first, then the sample's axes as the model takes them. Nothing
is reshaped by element count; a transpose happens only when the user declares the data's layout (data.layout).
Values must fit the input's dtype: integer inputs get no fractional floats and nothing that would wrap.
"""

from __future__ import annotations

import numpy as np

from deployc.core.state import TensorSpec
from deployc.data.dataset import Dataset, batch_axis, sample_shape
from deployc.errors import UsageError

# data.layout values: channels-first layouts are the model's own (nothing to do); channels-last ones move the last
# axis of each sample to the front. The letter forms also say the rank (samples included).
CHANNELS_LAST = {"nwc": 3, "nhwc": 4, "ndhwc": 5, "channels_last": None}
CHANNELS_FIRST = {"ncw": 3, "nchw": 4, "ncdhw": 5, "channels_first": None}
SCALE_RATIO = 20.0  # robust value ranges of two roles' samples of one input further apart than this: not one scaling


def _shape_text(shape: tuple) -> str:
    return str(tuple(int(d) for d in shape))


def _spec_text(spec: TensorSpec) -> str:
    return "[" + ", ".join(map(str, spec.shape)) + "]"


def _fits(got: tuple[int, ...], want: tuple[int | str, ...]) -> bool:
    return len(got) == len(want) and all(isinstance(w, str) or w == g for w, g in zip(want, got))


def _last_layout_name(rank: int) -> str:
    return next((k for k, r in CHANNELS_LAST.items() if r == rank), "channels_last")


def _mismatch_hint(arr: np.ndarray, spec: TensorSpec, want: tuple[int | str, ...], layout: str | None) -> str:
    """How to fix data whose per-sample shape is not the model's: the likeliest mistake, named."""
    got = arr.shape[1:]
    if layout in CHANNELS_LAST:
        return f"data.layout says '{spec.name}' is {layout}; these samples do not fit that either"
    if len(got) == len(want) > 1 and _fits(got[-1:] + got[:-1], want):
        order = ", ".join(map(str, (0, arr.ndim - 1, *range(1, arr.ndim - 1))))
        return (
            f"channels-last data? transpose it (x.transpose({order})), "
            f"or declare data.layout: {{{spec.name}: {_last_layout_name(len(spec.shape))}}}"
        )
    if len(got) == len(want) and sorted(map(str, got)) == sorted(map(str, want)) and got != want:
        return "the same sizes in another order: transpose the samples into the model's axis order"
    if len(got) + 1 == len(want) and any(_fits(got[:i] + (1,) + got[i:], want) for i in range(len(got) + 1)):
        return "an axis of size 1 is missing: add it (e.g. np.expand_dims); deployc does not reshape data"
    if int(np.prod(got)) == int(np.prod([w for w in want if isinstance(w, int)])) and all(
        isinstance(w, int) for w in want
    ):
        return "the same number of values per sample in another shape: deployc never reshapes by element count"
    return f"each sample must be [{', '.join(map(str, want))}] (if the model takes another shape, fix model.inputs)"


def _apply_layout(arr: np.ndarray, spec: TensorSpec, layout: str, where: str) -> np.ndarray:
    rank = {**CHANNELS_LAST, **CHANNELS_FIRST}[layout]
    if rank is not None and rank != len(spec.shape):
        raise UsageError(
            f"data.layout.{spec.name}: '{layout}' is a {rank}-axis layout; input '{spec.name}' has "
            f"{len(spec.shape)} axes {_spec_text(spec)}"
        )
    if layout in CHANNELS_FIRST or arr.ndim < 3:
        return arr
    moved = np.moveaxis(arr, -1, 1)
    if not _fits(moved.shape[1:], sample_shape(spec)) and _fits(arr.shape[1:], sample_shape(spec)):
        raise UsageError(
            f"{where}: data.layout says input '{spec.name}' is {layout} (channels last), but these samples "
            f"{_shape_text(arr.shape)} are already channels-first as the model takes them {_spec_text(spec)}: "
            f"one data source is channels-last and this one is not; give every role the same layout"
        )
    return np.ascontiguousarray(moved)


def _check_values(arr: np.ndarray, spec: TensorSpec, where: str) -> None:
    """Values that would change meaning when cast to the input's dtype: fractions or out-of-range integers."""
    target = np.dtype(spec.dtype)
    name = f"input '{spec.name}'"
    if target.kind in "iu" and arr.dtype.kind == "f":
        fractional = arr != np.round(arr)
        if fractional.any():
            i = int(np.argmax(fractional.reshape(len(arr), -1).any(axis=1))) if arr.ndim else 0
            raise UsageError(
                f"{where}: {name} takes {spec.dtype}, these samples are {arr.dtype} with fractional values "
                f"(e.g. {arr.reshape(-1)[int(np.argmax(fractional))]:g} in sample {i}); give integers "
                f"(token ids, indices), not scores or normalised values"
            )
    if target.kind in "iu" and arr.dtype.kind in "iuf" and arr.size:
        info = np.iinfo(target)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise UsageError(
                f"{where}: {name} takes {spec.dtype} ({info.min}..{info.max}); these samples hold values "
                f"{lo}..{hi}, which would wrap around when cast: check the ids, or declare the input's dtype"
            )
    if target.kind == "b" and arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
        raise UsageError(f"{where}: {name} takes bool; these samples hold values other than 0 and 1")


def fit_to_spec(arr: np.ndarray, spec: TensorSpec, where: str, layout: str | None = None) -> np.ndarray:
    """`arr` (samples first) checked against the input spec and cast to its dtype; `layout` is the data's declared
    layout (data.layout), the one case where the samples are transposed. Anything else that does not fit is exit 2
    with the likely fix."""
    if (
        not np.issubdtype(arr.dtype, np.number)
        and arr.dtype != np.bool_
        or np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise UsageError(f"{where}: input '{spec.name}' has non-numeric dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UsageError(f"{where}: input '{spec.name}' contains NaN or Inf")
    if batch_axis(spec) is None:
        if layout is not None:
            raise UsageError(f"data.layout.{spec.name}: input '{spec.name}' is a scalar; it has no layout")
        _check_values(arr, spec, where)
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
    if layout is not None:
        arr = _apply_layout(arr, spec, layout, where)
    if not _fits(arr.shape[1:], want):
        raise UsageError(
            f"{where}: input '{spec.name}' is {_shape_text(arr.shape)} (samples first), the model takes "
            f"{_spec_text(spec)}: {_mismatch_hint(arr, spec, want, layout)}"
        )
    _check_values(arr, spec, where)
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
    if np.issubdtype(cast.dtype, np.floating) and not np.isfinite(cast).all():  # e.g. float64 1e39 -> float32 inf
        raise UsageError(f"{where}: input '{spec.name}' holds values beyond the range of {spec.dtype}")
    return cast


def as_samples(a: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """One factory item's array with samples first: one sample (the sample's rank) gets a leading axis of 1, a batch
    (one more axis) stays; any other rank fits neither and is refused here, at the item, with the likely fix."""
    if batch_axis(spec) is None or a.ndim == 0:
        return a.reshape(1)
    want = sample_shape(spec)
    if a.ndim == len(want):
        return a[None]
    if a.ndim == len(want) + 1:
        return a
    one = a[None]
    raise UsageError(
        f"{where}: input '{spec.name}' is {_shape_text(a.shape)}, neither one sample nor a batch of samples of "
        f"[{', '.join(map(str, want))}] (the model takes {_spec_text(spec)}): {_mismatch_hint(one, spec, want, None)}"
    )


def integer_inputs_hint(specs: tuple[TensorSpec, ...]) -> str:
    """What to check when a model fails on integer inputs that fit their dtype: their meaning (e.g. vocabulary)."""
    ints = [s.name for s in specs if not s.dtype.startswith(("float", "bfloat"))]
    return f" (check integer inputs {ints} against what the model accepts, e.g. token ids < vocabulary)" if ints else ""


def check_layout_keys(layout: dict[str, str], specs: tuple[TensorSpec, ...]) -> None:
    """Every data.layout key names a model input."""
    names = {s.name for s in specs}
    for key in layout:
        if key not in names:
            from deployc.core.config import suggest

            raise UsageError(
                f"data.layout.{key}: the model has no input '{key}'{suggest(key, names)}; inputs: {', '.join(sorted(names))}"
            )


def _value_scale(arr: np.ndarray) -> float:
    """A robust size of an input's values: the 99.9th percentile of |x| over (at most) its first 256 samples."""
    head = np.abs(arr[:256].astype(np.float64, copy=False)).reshape(-1)
    return float(np.percentile(head, 99.9)) if head.size else 0.0


def check_roles_agree(roles: dict[str, Dataset | None], specs: tuple[TensorSpec, ...]) -> None:
    """The roles' samples of one float input share one scaling: 0-255 calibration images beside 0-1 validation
    images calibrate int8 ranges (or train) on data the model never sees. Opt out: data.skip_checks: [scale]."""
    for spec in specs:
        if not spec.dtype.startswith(("float", "bfloat")) or batch_axis(spec) is None:
            continue
        scales = {role: _value_scale(d.inputs[spec.name]) for role, d in roles.items() if d is not None}
        scales = {role: s for role, s in scales.items() if s > 0}
        if len(scales) < 2:
            continue
        hi, lo = max(scales, key=scales.get), min(scales, key=scales.get)
        if scales[hi] > SCALE_RATIO * scales[lo]:
            raise UsageError(
                f"data.{hi} ({roles[hi].source}): input '{spec.name}' reaches {scales[hi]:.4g}, data.{lo} "
                f"({roles[lo].source}) only {scales[lo]:.4g} ({scales[hi] / scales[lo]:.0f}× apart, 99.9th percentile "
                f"of |x|): one is scaled differently (0-255 images where the model takes 0-1?); give both the same "
                f"preprocessing, or set data.skip_checks: [scale]"
            )
