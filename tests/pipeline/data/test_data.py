"""Data sources: digits, .npz (with calib_* arrays), Python factories; errors name file and key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.core.config import load_config
from deployc.core.state import TensorSpec
from deployc.data.sources import calibration_source, load_dataset
from deployc.errors import UsageError
from tests.conftest import digits_npz, write

SPECS = (TensorSpec("image", ("batch", 1, 8, 8)),)


def _cfg(tmp_path: Path, validation: str, **data) -> object:
    return load_config({"model": {"factory": "x:y"}, "data": {"validation": validation, **data}}, base_dir=tmp_path)


def test_digits_splits_are_disjoint_and_fixed():
    cfg = load_config({"model": {"factory": "x:y"}})
    test = load_dataset(
        load_config({"model": {"factory": "x:y"}, "data": {"validation": "digits"}}).data.validation,
        cfg,
        SPECS,
        "validation",
    )
    train = load_dataset(
        cfg.data.model_fields["validation"].annotation.__args__[0].model_validate("digits:train"),
        cfg,
        SPECS,
        "calibration",
    )
    assert len(test) == 450 and len(train) == 1347
    assert test.inputs["image"].shape == (450, 1, 8, 8) and test.inputs["image"].max() <= 1.0
    flat = {a.tobytes() for a in train.inputs["image"]}
    assert sum(a.tobytes() in flat for a in test.inputs["image"]) < 10  # digits has a few duplicate images


def test_npz_validation_and_calibration(tmp_path: Path):
    digits_npz(tmp_path / "d.npz", n=32)
    cfg = _cfg(tmp_path, "d.npz")
    val = load_dataset(cfg.data.validation, cfg, SPECS, "validation")
    assert len(val) == 32 and val.labels.shape == (32,)
    src = calibration_source(cfg)
    calib = load_dataset(src, cfg, SPECS, "calibration")
    assert not np.array_equal(calib.inputs["image"], val.inputs["image"])


def test_npz_errors_name_file_and_key(tmp_path: Path):
    np.savez(tmp_path / "wrong.npz", img=np.zeros((4, 1, 8, 8), np.float32))
    cfg = _cfg(tmp_path, "wrong.npz")
    with pytest.raises(UsageError, match=r"data.validation: '.*wrong.npz' has no array 'image' .*\(arrays: img\)"):
        load_dataset(cfg.data.validation, cfg, SPECS, "validation")
    np.savez(tmp_path / "shape.npz", image=np.zeros((4, 3, 8, 8), np.float32))
    cfg = _cfg(tmp_path, "shape.npz")
    with pytest.raises(
        UsageError,
        match=r"input 'image' is \(4, 3, 8, 8\) \(samples first\), the model takes \[batch, 1, 8, 8\]: each sample must be \[1, 8, 8\] \(if the model",
    ):
        load_dataset(cfg.data.validation, cfg, SPECS, "validation")
    np.savez(tmp_path / "empty.npz", image=np.zeros((0, 1, 8, 8), np.float32))
    cfg = _cfg(tmp_path, "empty.npz")
    with pytest.raises(UsageError, match="no samples for input 'image'"):
        load_dataset(cfg.data.validation, cfg, SPECS, "validation")
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    cfg = _cfg(tmp_path, "trunc.npz")
    with pytest.raises(UsageError, match="is not a readable .npz file"):
        load_dataset(cfg.data.validation, cfg, SPECS, "validation")


def test_factory_data(tmp_path: Path):
    write(
        tmp_path / "data.py",
        """
        import numpy as np
        def samples():
            for i in range(5):
                yield {"image": np.full((2, 1, 8, 8), i, np.float32)}, np.array([i, i])
    """,
    )
    cfg = _cfg(tmp_path, "data.py:samples")
    ds = load_dataset(cfg.data.validation, cfg, SPECS, "validation")
    assert len(ds) == 10 and ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_label_metric_without_labels_is_rejected(tmp_path: Path, tiny_factory: Path):
    from deployc.driver.build import build

    np.savez(tmp_path / "nolabels.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    cfg = {
        "model": {"factory": "tiny.py:make", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}]},
        "data": {"validation": "nolabels.npz", "metric": "top1"},
        "base_dir": tmp_path,
    }
    with pytest.raises(UsageError, match=r"'top1' needs labels, and data.validation \(nolabels.npz\) has none"):
        build(cfg, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_take_gives_one_object_per_count_and_the_digest_tells_samples_apart():
    """Stages memoize on Dataset.digest: take(n) must hand every stage the same object (hashed once), and the
    digest must change with any input value, dtype, shape or label."""
    from deployc.data.dataset import Dataset

    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    data = Dataset({"x": x}, np.arange(6), "t")
    assert data.take(6) is data and data.take(10) is data
    assert data.take(3) is data.take(3) and len(data.take(3)) == 3
    assert data.take(3).digest == Dataset({"x": x[:3].copy()}, np.arange(3), "other").digest
    changed = x.copy()
    changed[5, 3] += 1
    others = [
        Dataset({"x": changed}, np.arange(6), "t"),
        Dataset({"x": x.astype(np.float64)}, np.arange(6), "t"),
        Dataset({"x": x.reshape(6, 2, 2)}, np.arange(6), "t"),
        Dataset({"x": x}, np.arange(6) + 1, "t"),
        Dataset({"y": x}, np.arange(6), "t"),
    ]
    assert len({data.digest, *(d.digest for d in others)}) == len(others) + 1
