"""Property-based tests: config parsing and data loading never fail with anything but a UsageError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deployc.core.config import BuildConfig, load_config
from deployc.core.state import TensorSpec
from deployc.data.sources import load_dataset
from deployc.errors import UsageError

KEYS = [
    "name",
    "model",
    "data",
    "passes",
    "targets",
    "quantize",
    "validate",
    "factory",
    "onnx",
    "inputs",
    "shape",
    "metric",
    "validation",
    "calibration",
    "max_drift",
    "precision",
    "per_channel",
    "samples",
    "split",
    "kind",
]
leaf = (
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.sampled_from(["digits", "digits:train", "x.npz", "f.py:g", "int8", "fp32", "top1", "batch"])
)
values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_any_config_dict_parses_or_gives_usage_error(raw: dict):
    try:
        cfg = load_config(raw)
    except UsageError as exc:
        assert str(exc).startswith("config: ")
    else:
        assert isinstance(cfg, BuildConfig)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    image=arrays(
        st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
        st.tuples(st.integers(0, 5), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
    ),
    labels=st.none() | arrays(np.int64, st.integers(0, 6)),
    with_calib=st.booleans(),
)
def test_any_npz_loads_or_gives_usage_error(tmp_path: Path, image: np.ndarray, labels, with_calib: bool):
    arrays_ = {"image": image}
    if labels is not None:
        arrays_["labels"] = labels
    if with_calib:
        arrays_["calib_image"] = image[::-1]
    np.savez(tmp_path / "d.npz", **arrays_)
    cfg = load_config({"model": {"factory": "x:y"}, "data": {"validation": "d.npz"}}, base_dir=tmp_path)
    spec = (TensorSpec("image", ("batch", 1, 8, 8)),)
    for role in ("validation", "calibration"):
        try:
            ds = load_dataset(cfg.data.validation, cfg, spec, role)
        except UsageError as exc:
            assert "data." in str(exc)
        else:
            assert ds.inputs["image"].shape[1:] == (1, 8, 8) and ds.inputs["image"].dtype == np.float32
            assert np.isfinite(ds.inputs["image"]).all() and len(ds) > 0
