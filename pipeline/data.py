"""Samples for calibration and validation: scikit-learn's bundled digits, .npz files, or a Python factory."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployc.config import BuildConfig, DataSource
from deployc.errors import UsageError
from deployc.pyimport import import_callable
from deployc.state import TensorSpec


@dataclass(frozen=True)
class Dataset:
    """Whole arrays in memory (N first), one per model input, plus optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, n: int) -> Dataset:
        return Dataset(
            {k: v[:n] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[:n], self.source
        )

    def batches(self, size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        for start in range(0, len(self), size):
            sl = slice(start, start + size)
            yield {k: v[sl] for k, v in self.inputs.items()}, None if self.labels is None else self.labels[sl]


def digits_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits as (N,1,8,8) float32 in [0,1] and int64 labels; fixed 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def _fit_to_spec(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """Check `arr` against the input spec (fixed axes must match), reshaping digits-style images if needed."""
    want = spec.shape[1:]
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
                f"the model input expects {list(want)}"
            )
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise UsageError(f"{where}: input '{spec.name}' has non-numeric dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise UsageError(f"{where}: input '{spec.name}' contains NaN or Inf")
    return np.ascontiguousarray(arr.astype(spec.dtype, copy=False))


def _load_npz(
    path: Path, specs: tuple[TensorSpec, ...], calibration: bool, where: str
) -> tuple[dict, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise UsageError(f"{where}: file '{path}' not found") from None
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


def _load_factory(
    spec: str, config: BuildConfig, specs: tuple[TensorSpec, ...], where: str
) -> tuple[dict, np.ndarray | None]:
    fn = import_callable(spec, config.base_dir, where)
    try:
        items = list(fn())
    except Exception as exc:
        raise UsageError(f"{where}: factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not items:
        raise UsageError(f"{where}: factory '{spec}' yielded no samples")
    cols: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    labels: list[np.ndarray] = []
    for i, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise UsageError(f"{where}: factory '{spec}' item {i} is not an (inputs, labels) pair")
        x, y = item
        if not isinstance(x, dict):
            x = dict(zip([s.name for s in specs], x if isinstance(x, (tuple, list)) else [x]))
        for s in specs:
            if s.name not in x:
                raise UsageError(f"{where}: factory '{spec}' item {i} has no input '{s.name}'")
            cols[s.name].append(np.asarray(x[s.name]))
        if y is not None:
            labels.append(np.atleast_1d(np.asarray(y)))
    inputs = {k: np.concatenate([np.atleast_1d(a) if a.ndim else a[None] for a in v]) for k, v in cols.items()}
    return inputs, (np.concatenate(labels) if labels else None)


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
        inputs, labels = _load_factory(source.path, config, specs, where)
        name = source.path
    inputs = {s.name: _fit_to_spec(inputs[s.name], s, where) for s in specs}
    lengths = {k: len(v) for k, v in inputs.items()}
    if labels is not None:
        lengths["labels"] = len(labels)
    if len(set(lengths.values())) != 1:
        raise UsageError(f"{where}: arrays disagree on the sample count: {lengths}")
    ds = Dataset(inputs, labels, name)
    return ds.take(source.limit) if source.limit else ds


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
        try:
            with np.load(path, allow_pickle=False) as npz:
                if any(k.startswith("calib_") for k in npz.files):
                    return d.validation
        except Exception:
            return None  # the validation loader reports the unreadable file with its own message
    return None
