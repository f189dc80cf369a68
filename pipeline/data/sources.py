"""Samples for calibration and validation: scikit-learn's bundled digits, .npz files, or a Python factory."""

from __future__ import annotations

import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.config import FACTORY_CAP, BuildConfig, DataSource
from deployc.core.pyimport import import_callable
from deployc.core.state import TensorSpec
from deployc.data.contract import as_samples, check_layout_keys, fit_to_spec
from deployc.data.dataset import Dataset, batch_axis
from deployc.errors import UsageError, regular_file

MAX_DATA_BYTES = 8 << 30  # one data source in memory; a factory past it is refused before it fills the machine


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as (N,1,8,8) float32 in [0,1] and int64 labels; fixed 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def _load_npz(
    path: Path, specs: tuple[TensorSpec, ...], calibration: bool, where: str
) -> tuple[dict, np.ndarray | None]:
    regular_file(path, where)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"{where}: '{path}' is not a readable .npz file ({exc})") from None
    inputs = {}
    for spec in specs:
        key = f"calib_{spec.name}" if calibration and f"calib_{spec.name}" in arrays else spec.name
        if key not in arrays:
            raise UsageError(
                f"{where}: '{path}' has no array '{spec.name}' for model input '{spec.name}' "
                f"(arrays: {', '.join(sorted(arrays)) or 'none'})"
            )
        inputs[spec.name] = arrays[key]
    labels = None if calibration and any(f"calib_{s.name}" in arrays for s in specs) else arrays.get("labels")
    return inputs, labels


def _factory_items(fn: Any, spec: str, where: str) -> Iterator[Any]:
    """The factory's items, read one at a time (the caller stops at its cap); its exceptions name it."""
    try:
        items = iter(fn())
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            yield item
    except SystemExit as exc:
        raise UsageError(f"{where}: factory '{spec}' called sys.exit({exc.code!r})") from None
    except (UsageError, GeneratorExit):
        raise
    except Exception as exc:
        raise UsageError(f"{where}: factory '{spec}' raised {type(exc).__name__}: {exc}") from exc


def _load_factory(
    source: DataSource, config: BuildConfig, specs: tuple[TensorSpec, ...], where: str
) -> tuple[dict, np.ndarray | None]:
    spec = source.path
    fn = import_callable(spec, config.base_dir, where)
    cap = source.limit or FACTORY_CAP
    cols: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    count, nbytes = 0, 0
    for i, item in enumerate(_factory_items(fn, spec, where)):
        if count >= cap:
            if source.limit:
                break
            raise UsageError(f"{where}: factory '{spec}' yields more than {cap} samples; set {where}.limit")
        if not (isinstance(item, tuple) and len(item) == 2):
            raise UsageError(f"{where}: factory '{spec}' item {i} is not an (inputs, labels) pair")
        x, y = item
        if not isinstance(x, dict):
            x = dict(zip([s.name for s in specs], x if isinstance(x, (tuple, list)) else [x]))
        n = None
        for s in specs:
            if s.name not in x:
                raise UsageError(f"{where}: factory '{spec}' item {i} has no input '{s.name}'")
            a = as_samples(np.asarray(x[s.name]), s, f"{where}: factory '{spec}' item {i}")
            if cols[s.name] and batch_axis(s) is not None and a.shape[1:] != cols[s.name][0].shape[1:]:
                raise UsageError(
                    f"{where}: factory '{spec}' item {i}: input '{s.name}' has shape {list(a.shape[1:])} per sample, "
                    f"earlier items {list(cols[s.name][0].shape[1:])}; every sample must have one shape"
                )
            cols[s.name].append(a)
            nbytes += a.nbytes
            n = len(a) if batch_axis(s) is not None else n
        if y is not None:
            labels.append(np.atleast_1d(np.asarray(y)))
        count += n or 1
        if nbytes > MAX_DATA_BYTES:
            raise UsageError(
                f"{where}: factory '{spec}' yields more than {MAX_DATA_BYTES >> 30} GiB; set {where}.limit"
            )
    if not count:
        raise UsageError(f"{where}: factory '{spec}' yielded no samples")
    inputs = {k: np.concatenate(v)[:cap] for k, v in cols.items()}
    if labels and len({lab.shape[1:] for lab in labels}) != 1:
        raise UsageError(f"{where}: factory '{spec}' yields labels of different shapes")
    return inputs, (np.concatenate(labels)[:cap] if labels else None)


def load_dataset(source: DataSource, config: BuildConfig, specs: tuple[TensorSpec, ...], role: str) -> Dataset:
    """Load one data source for `role` ('validation' or 'calibration') and check it against the inputs."""
    where = f"data.{role}"
    if source.kind == "digits":
        if len(specs) != 1:
            raise UsageError(f"{where}: 'digits' feeds one image input; the model has {len(specs)} inputs")
        x, y = digits_arrays(source.split)
        inputs, labels, name = {specs[0].name: x}, y, f"digits:{source.split}"
    elif source.kind == "npz":
        path = config.resolve(source.path)
        inputs, labels = _load_npz(path, specs, role == "calibration", where)
        name = str(source.path)
    else:
        inputs, labels = _load_factory(source, config, specs, where)
        name = source.path
    check_layout_keys(config.data.layout, specs)
    inputs = {s.name: fit_to_spec(inputs[s.name], s, where, config.data.layout.get(s.name)) for s in specs}
    axes = {s.name: batch_axis(s) for s in specs}
    lengths = {k: len(v) for k, v in inputs.items() if axes[k] is not None}
    if labels is not None:
        lengths["labels"] = len(labels)
    if len(set(lengths.values())) > 1:
        raise UsageError(f"{where}: arrays disagree on the sample count: {lengths}")
    ds = Dataset(inputs, labels, name, axes)
    ds = ds.take(source.limit) if source.limit else ds
    fixed = {
        s.shape[axes[s.name]] for s in specs if axes[s.name] is not None and not isinstance(s.shape[axes[s.name]], str)
    }
    if len(fixed) > 1:
        raise UsageError(f"{where}: the model's inputs have different fixed batch sizes {sorted(fixed)}")
    if fixed:  # a fixed batch axis takes whole batches only
        step = fixed.pop()
        if len(ds) < step:
            raise UsageError(f"{where}: {len(ds)} samples, fewer than the model's fixed batch of {step}")
        ds = dataclasses.replace(ds.take(len(ds) - len(ds) % step), fixed_batch=step)
    return ds


def train_source(config: BuildConfig) -> DataSource | None:
    """data.train, else the train split when validation is digits (training never sees validation samples)."""
    d = config.data
    if d.train is not None:
        return d.train
    if d.validation is not None and d.validation.kind == "digits":
        return DataSource(kind="digits", split="train")
    return None


def calibration_source(config: BuildConfig) -> DataSource | None:
    """data.calibration, else the train split of a digits validation set, else calib_* arrays of an npz."""
    d = config.data
    if d.calibration is not None:
        return d.calibration
    if d.validation is not None and d.validation.kind == "digits":
        return DataSource(kind="digits", split="train")
    if d.validation is not None and d.validation.kind == "npz":
        path = config.resolve(d.validation.path)
        if not path.is_file():
            return None  # the validation loader reports a missing or special file with its own message
        try:
            with np.load(path, allow_pickle=False) as npz:
                if any(k.startswith("calib_") for k in npz.files):
                    return d.validation
        except Exception:
            return None  # the validation loader reports the unreadable file with its own message
    return None
