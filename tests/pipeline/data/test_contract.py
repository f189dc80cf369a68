"""Issue 24: one input contract for every data path. Data matches the declared inputs exactly (no reshape by element
count), a layout is transposed only when declared, integer inputs get nothing that would wrap or round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.core.config import load_config
from deployc.core.state import TensorSpec
from deployc.data.contract import check_roles_agree
from deployc.data.sources import load_dataset
from deployc.errors import UsageError
from deployc.validation.preflight import preflight
from tests.conftest import write

IMAGE = (TensorSpec("image", ("batch", 3, 32, 32)),)


def _cfg(tmp_path: Path, **data) -> object:
    return load_config({"model": {"factory": "x:y"}, "data": data}, base_dir=tmp_path)


def _cifar_like(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """NCHW images whose class is the brightest channel: a layout mix-up scrambles exactly what tells them apart."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, n)
    x = rng.uniform(0, 0.3, (n, 3, 32, 32)).astype(np.float32)
    x[np.arange(n), labels] += 0.6
    return x, labels


def test_channels_last_npz_is_refused_with_the_fix(tmp_path: Path):
    """Example 1: (N,32,32,3) for [batch,3,32,32] was reshaped by element count, reference at chance, exit 0."""
    x, y = _cifar_like()
    np.savez(tmp_path / "nhwc.npz", image=x.transpose(0, 2, 3, 1), labels=y)
    cfg = _cfg(tmp_path, validation="nhwc.npz")
    with pytest.raises(UsageError) as err:
        load_dataset(cfg.data.validation, cfg, IMAGE, "validation")
    assert str(err.value) == (
        "data.validation: input 'image' is (40, 32, 32, 3) (samples first), the model takes [batch, 3, 32, 32]: "
        "channels-last data? transpose it (x.transpose(0, 3, 1, 2)), or declare data.layout: {image: nhwc}"
    )


def test_declared_layout_transposes_exactly(tmp_path: Path):
    x, y = _cifar_like()
    np.savez(tmp_path / "nhwc.npz", image=x.transpose(0, 2, 3, 1), labels=y)
    cfg = _cfg(tmp_path, validation="nhwc.npz", layout={"image": "nhwc"})
    data = load_dataset(cfg.data.validation, cfg, IMAGE, "validation")
    assert np.array_equal(data.inputs["image"], x) and data.inputs["image"].flags.c_contiguous


def test_layout_errors_name_the_key(tmp_path: Path):
    x, _ = _cifar_like(4)
    np.savez(tmp_path / "nhwc.npz", image=x.transpose(0, 2, 3, 1))
    with pytest.raises(UsageError, match=r"data.layout.img: the model has no input 'img' \(did you mean 'image'\?\)"):
        cfg = _cfg(tmp_path, validation="nhwc.npz", layout={"img": "nhwc"})
        load_dataset(cfg.data.validation, cfg, IMAGE, "validation")
    with pytest.raises(UsageError, match=r"data.layout.image: 'nwc' is a 3-axis layout; input 'image' has 4 axes"):
        cfg = _cfg(tmp_path, validation="nhwc.npz", layout={"image": "nwc"})
        load_dataset(cfg.data.validation, cfg, IMAGE, "validation")


def test_nhwc_calibration_beside_nchw_validation_is_refused(tmp_path: Path):
    """Own case: calibration data in the other layout calibrates int8 ranges on scrambled channels."""
    x, y = _cifar_like()
    np.savez(tmp_path / "val.npz", image=x, labels=y)
    np.savez(tmp_path / "cal.npz", image=x.transpose(0, 2, 3, 1))
    cfg = _cfg(tmp_path, validation="val.npz", calibration="cal.npz")
    assert load_dataset(cfg.data.validation, cfg, IMAGE, "validation").inputs["image"].shape == (40, 3, 32, 32)
    with pytest.raises(UsageError, match=r"^data.calibration: input 'image' is \(40, 32, 32, 3\).*channels-last data"):
        load_dataset(cfg.data.calibration, cfg, IMAGE, "calibration")
    # declared channels-last, but one role is not: named, not transposed into garbage
    cfg = _cfg(tmp_path, validation="val.npz", calibration="cal.npz", layout={"image": "nhwc"})
    assert load_dataset(cfg.data.calibration, cfg, IMAGE, "calibration").inputs["image"].shape == (40, 3, 32, 32)
    with pytest.raises(
        UsageError, match=r"data.validation: data.layout says input 'image' is nhwc .* already channels-first"
    ):
        load_dataset(cfg.data.validation, cfg, IMAGE, "validation")


def test_no_reshape_by_element_count_in_any_source(tmp_path: Path):
    """Own case: flat (N,64) digits for [batch,1,8,8], from an npz and from a factory, are refused the same way."""
    flat = np.random.default_rng(0).uniform(0, 1, (16, 64)).astype(np.float32)
    np.savez(tmp_path / "flat.npz", image=flat)
    write(
        tmp_path / "data.py",
        f"""
        import numpy as np
        def items():
            for row in np.load({str(tmp_path / "flat.npz")!r})["image"]:
                yield {{"image": row}}, None
        """,
    )
    specs = (TensorSpec("image", ("batch", 1, 8, 8)),)
    for source in ("flat.npz", "data.py:items"):
        cfg = _cfg(tmp_path, validation=source)
        with pytest.raises(UsageError, match=r"takes \[batch, 1, 8, 8\]\)?: the same number of values per sample"):
            load_dataset(cfg.data.validation, cfg, specs, "validation")
    np.savez(tmp_path / "squeezed.npz", image=flat.reshape(16, 8, 8))
    cfg = _cfg(tmp_path, validation="squeezed.npz")
    with pytest.raises(UsageError, match=r"an axis of size 1 is missing: add it \(e.g. np.expand_dims\)"):
        load_dataset(cfg.data.validation, cfg, specs, "validation")


TOKENS = (TensorSpec("ids", ("batch", 8), "int32"),)


def test_integer_inputs_never_wrap_or_round(tmp_path: Path):
    """Example 5: int64 values up to 2**40 into int32, and floats 0.0-3.0 into an integer input, were cast silently."""
    big = np.full((4, 8), 7, np.int64)
    big[2, 3] = 2**40
    np.savez(tmp_path / "big.npz", ids=big)
    cfg = _cfg(tmp_path, validation="big.npz")
    with pytest.raises(UsageError) as err:
        load_dataset(cfg.data.validation, cfg, TOKENS, "validation")
    assert "input 'ids' takes int32 (-2147483648..2147483647); these samples hold values 7..1099511627776" in str(
        err.value
    )
    np.savez(tmp_path / "frac.npz", ids=np.linspace(0.0, 3.0, 32).reshape(4, 8))
    cfg = _cfg(tmp_path, validation="frac.npz")
    with pytest.raises(UsageError, match=r"input 'ids' takes int32, these samples are float64 with fractional values"):
        load_dataset(cfg.data.validation, cfg, TOKENS, "validation")
    np.savez(tmp_path / "whole.npz", ids=np.arange(32, dtype=np.float64).reshape(4, 8))  # integral floats are ids
    cfg = _cfg(tmp_path, validation="whole.npz")
    data = load_dataset(cfg.data.validation, cfg, TOKENS, "validation")
    assert data.inputs["ids"].dtype == np.int32 and data.inputs["ids"][3, 7] == 31


def test_bool_input_takes_only_zero_and_one(tmp_path: Path):
    """Own case: a 0.3 'mask' into a bool input became True."""
    np.savez(tmp_path / "mask.npz", mask=np.full((4, 8), 0.3))
    cfg = _cfg(tmp_path, validation="mask.npz")
    with pytest.raises(UsageError, match=r"input 'mask' takes bool; these samples hold values other than 0 and 1"):
        load_dataset(cfg.data.validation, cfg, (TensorSpec("mask", ("batch", 8), "bool"),), "validation")


def test_0_255_calibration_beside_0_1_validation_is_refused():
    """Own case: uint8 images given as 0-255 floats for calibration while validation (and the model) use 0-1."""
    from deployc.data.dataset import Dataset

    x, _ = _cifar_like()
    val = Dataset({"image": x}, None, "val.npz")
    cal = Dataset({"image": (x * 255).astype(np.float32)}, None, "cal.npz")
    with pytest.raises(UsageError) as err:
        check_roles_agree({"validation": val, "calibration": cal, "train": None}, IMAGE)
    assert str(err.value).startswith(
        "data.calibration (cal.npz): input 'image' reaches 229.3, data.validation (val.npz) only 0.899"
    )
    assert "255× apart" in str(err.value) and "data.skip_checks: [scale]" in str(err.value)
    check_roles_agree({"validation": val, "calibration": Dataset({"image": x * 0.8}, None, "c")}, IMAGE)


def test_validate_config_refuses_channels_last_data(tmp_path: Path):
    """Example 1, the rest: `validate-config` said ok. It runs the same contract."""
    write(
        tmp_path / "net.py",
        """
        import torch
        from torch import nn
        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        """,
    )
    x, y = _cifar_like()
    np.savez(tmp_path / "nhwc.npz", image=x.transpose(0, 2, 3, 1), labels=y)
    config = {
        "model": {"factory": "net.py:make", "inputs": [{"name": "image", "shape": ["batch", 3, 32, 32]}]},
        "data": {"validation": "nhwc.npz", "metric": "cosine"},
    }
    with pytest.raises(UsageError, match=r"channels-last data\? transpose it"):
        preflight(load_config(config, base_dir=tmp_path))
