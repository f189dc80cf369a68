"""Samples for calibration and validation: scikit-learn's bundled digits, .npz files, or a Python factory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.config import FACTORY_CAP, BuildConfig, DataSource
from deployc.core.pyimport import import_callable
from deployc.core.state import TensorSpec
from deployc.data.contract import as_samples, fit_to_spec
from deployc.data.dataset import Dataset, batch_axis
from deployc.errors import UsageError
from deployc.storage.arrays import Npz
from deployc.storage.files import size_text

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
    """Only the arrays the model's inputs (and the labels) use are read, each after its declared size is checked
    against what is left of MAX_DATA_BYTES (storage/arrays.py): an unused 3 GiB array costs nothing."""
    with Npz(path, where) as npz:
        names = npz.files
        calib = calibration and any(f"calib_{s.name}" in names for s in specs)
        budget = MAX_DATA_BYTES
        inputs = {}
        for spec in specs:
            key = f"calib_{spec.name}" if calibration and f"calib_{spec.name}" in names else spec.name
            if key not in names:
                raise UsageError(
                    f"{where}: '{path}' has no array '{spec.name}' for model input '{spec.name}' "
                    f"(arrays: {', '.join(names) or 'none'})"
                )
            inputs[spec.name] = npz.array(key, budget)
            budget -= inputs[spec.name].nbytes
        labels = None if calib or "labels" not in names else npz.array("labels", budget)
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


ITEM_OVERHEAD = 128  # bytes of Python object per array a factory yields, counted against MAX_DATA_BYTES
_PACK = 1024  # items packed into one array at a time: a list of tiny arrays costs more than their data


class _Column:
    """One input's samples from a factory, appended item by item and packed into one array every _PACK items."""

    def __init__(self) -> None:
        self.packed: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []
        self.shape: tuple[int, ...] | None = None

    def append(self, a: np.ndarray) -> None:
        self.shape = a.shape[1:] if self.shape is None else self.shape
        self.pending.append(a)
        if len(self.pending) >= _PACK:
            self.packed.append(np.concatenate(self.pending))
            self.pending = []

    def array(self) -> np.ndarray:
        return np.concatenate(self.packed + self.pending)


def _load_factory(
    source: DataSource, config: BuildConfig, specs: tuple[TensorSpec, ...], where: str
) -> tuple[dict, np.ndarray | None]:
    spec = source.path
    fn = import_callable(spec, config.base_dir, where)
    cap = source.limit or FACTORY_CAP
    cols = {s.name: _Column() for s in specs}
    labels = _Column()
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
            a = as_samples(np.asarray(x[s.name]), s)
            col = cols[s.name]
            if col.shape is not None and batch_axis(s) is not None and a.shape[1:] != col.shape:
                raise UsageError(
                    f"{where}: factory '{spec}' item {i}: input '{s.name}' has shape {list(a.shape[1:])} per sample, "
                    f"earlier items {list(col.shape)}; every sample must have one shape"
                )
            col.append(a)
            nbytes += a.nbytes + ITEM_OVERHEAD
            n = len(a) if batch_axis(s) is not None else n
        if y is not None:
            lab = np.atleast_1d(np.asarray(y))
            if labels.shape is not None and lab.shape[1:] != labels.shape:
                raise UsageError(f"{where}: factory '{spec}' yields labels of different shapes")
            labels.append(lab)
            nbytes += lab.nbytes + ITEM_OVERHEAD
        count += n or 1
        if nbytes > MAX_DATA_BYTES:
            raise UsageError(
                f"{where}: factory '{spec}' yields more than {size_text(MAX_DATA_BYTES)} after {count} samples "
                f"(limit: {source.limit or cap}); set {where}.limit lower"
            )
    if not count:
        raise UsageError(f"{where}: factory '{spec}' yielded no samples")
    inputs = {k: v.array()[:cap] for k, v in cols.items()}
    return inputs, (labels.array()[:cap] if labels.shape is not None else None)


def load_dataset(source: DataSource, config: BuildConfig, specs: tuple[TensorSpec, ...], role: str) -> Dataset:
    """Load one data source for `role` ('validation' or 'calibration') and check it against the inputs."""
    where = f"data.{role}"
    try:
        return _load_dataset(source, config, specs, where)
    except MemoryError:
        raise UsageError(
            f"{where}: not enough memory to hold this data source (limit: {size_text(MAX_DATA_BYTES)}); set "
            f"{where}.limit lower"
        ) from None


def _load_dataset(source: DataSource, config: BuildConfig, specs: tuple[TensorSpec, ...], where: str) -> Dataset:
    role = where.removeprefix("data.")
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
    inputs = {s.name: fit_to_spec(inputs[s.name], s, where) for s in specs}
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
        try:
            with Npz(config.resolve(d.validation.path), "data.validation") as npz:
                if any(k.startswith("calib_") for k in npz.files):
                    return d.validation
        except UsageError:
            return None  # the validation loader reports the missing, special or unreadable file with its message
    return None
