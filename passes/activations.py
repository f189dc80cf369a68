"""Named tensors of an ONNX graph over a dataset, one batch at a time: what calibration, the fallback ranking and the
channel-range check accumulate statistics from. Batches are sized to the build's memory budget (core/memory.py) from
the bytes the tensors take per sample; nothing is kept from one batch to the next."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from deployc.core import memory
from deployc.core.ort import session
from deployc.core.timing import available_cpus
from deployc.data.dataset import Dataset
from deployc.passes.onnx_util import copied

DEFAULT_BATCH = 64  # samples per batch when the budget allows it
_T, _R = TypeVar("_T"), TypeVar("_R")


def run_key(proto: Any, data: Dataset, *qualifiers: object) -> str:
    """The key a stage memoizes under what it computed by running `proto` on `data` (with `qualifiers`, such as a
    batch size or a method): every remedy trial runs the same float graph on the same samples."""
    import hashlib

    extra = ":".join(map(str, qualifiers))
    return hashlib.sha256(proto.SerializeToString(deterministic=True) + f"{extra}:{data.digest}".encode()).hexdigest()


def one_sample(data: Dataset) -> dict[str, np.ndarray]:
    """The first batch of one sample (the model's fixed batch, if it has one), as fed."""
    return next(data.batches(1))[0]


def per_sample_bytes(proto: Any, names: list[str], data: Dataset, scratch: int = 0) -> int:
    """Bytes one sample takes when a run of `proto` returns `names` and a stage works on `scratch` more copies of
    the largest of them at a time."""
    feed = one_sample(data)
    est = memory.graph_activations(proto, feed)
    sizes = [est.tensors.get(n, 0) for n in set(names)]
    return (est.peak + sum(sizes) + scratch * max(sizes, default=0)) // max(data.batch_len(feed), 1)


def run_bytes(proto: Any, names: Iterable[str], data: Dataset) -> int:
    """Bytes the named tensors of `proto` take over all of `data` (estimated from the graph's shapes): what a stage
    that keeps them for a later one holds."""
    feed = one_sample(data)
    sizes = memory.graph_activations(proto, feed).tensors
    return sum(sizes.get(n, 0) for n in set(names)) // max(data.batch_len(feed), 1) * len(data)


def batch_size(per_sample: int, data: Dataset, what: str, wanted: int = DEFAULT_BATCH) -> int:
    """Samples per batch for a stage holding `per_sample` bytes a sample (MemoryBudgetExceeded when none fits)."""
    return memory.batch_for(per_sample, min(wanted, max(len(data), 1)), what, data.fixed_batch)


def guarded(per_sample: int, data: Dataset, what: str, wanted: int = DEFAULT_BATCH) -> memory.Guard:
    """Batches for a stage holding `per_sample` bytes a sample, shrunk when a batch grows the process more than that
    (memory.Guard); for one stream of batches only: two streams compared batch by batch need a pinned batch_size."""
    return memory.Guard(per_sample, min(wanted, max(len(data), 1)), what, data.fixed_batch)


def streamed(
    proto: Any, names: list[str], data: Dataset, what: str, batch: int | memory.Guard | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """{name: value} for each batch of `data`, the graph run unoptimised (every named tensor survives); graph
    inputs among `names` come from the feeds. `batch`: samples per batch, or a guard sizing them (default: a guard
    from the budget)."""
    import onnx

    inputs = {i.name for i in proto.graph.input}
    run_names = [n for n in dict.fromkeys(names) if n not in inputs]
    exposed = copied(proto)
    have = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in run_names if n not in have)
    size = batch or guarded(per_sample_bytes(proto, names, data), data, what)
    sess = session(exposed, optimize=False, spin=False)
    feeds = {i.name for i in sess.get_inputs()}
    for x, _ in data.batches(size):
        values = (
            dict(zip(run_names, sess.run(run_names, {k: v for k, v in x.items() if k in feeds}))) if run_names else {}
        )
        values.update({n: x[n] for n in names if n in inputs and n in x})
        yield values


def run_ahead(batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """`batches` with the next one computed in a worker thread while the caller works on this one: onnxruntime's run
    leaves the GIL, so a stage's numpy work on a batch overlaps the run of the next. Two batches are alive at once:
    only for a stage whose budget has room for both (memory.room_for)."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    end = object()
    # the worker runs in the caller's context: the build's memory budget (a ContextVar) sizes and guards its batches
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1, thread_name_prefix="deployc-run-ahead") as pool:
        pending = pool.submit(context.run, next, batches, end)
        while (values := pending.result()) is not end:
            pending = pool.submit(context.run, next, batches, end)
            yield values
            del values  # this batch's arrays go before the one after the next is computed


def side_by_side(work: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    """[work(item) for item in items], the items shared out among the machine's cores: numpy's arithmetic on large
    arrays leaves the GIL, so one batch's tensors are measured side by side. Each item's work must touch only its
    own state (then the results are the loop's, bit for bit); the worker threads run in the caller's context (the
    build's memory budget). Not to be nested: a stage measures the tensors of one batch at a time."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    todo = list(items)
    workers = min(available_cpus(), _MOST_WORKERS, len(todo))
    if workers <= 1:
        return [work(item) for item in todo]
    context = contextvars.copy_context()
    with ThreadPoolExecutor(workers, thread_name_prefix="deployc-tensors") as pool:
        # a context each: one Context object cannot be entered by two threads at once
        return list(pool.map(lambda item: context.copy().run(work, item), todo))


_MOST_WORKERS = 4  # beyond this, the batch's memory bandwidth, not its cores, bounds the arithmetic


# One run's values, kept for the next stage that runs the same graph on the same samples in the same batches (a
# smoothing trial's partial calibration, then its bias correction): small runs only, within the memory budget.
_KEPT: dict[str, Any] = {}
_KEPT_OWNER = "one run's activations"


def keep_run(key: str, sizes: list[int], values: dict[str, list[np.ndarray]]) -> None:
    """Keep `values` (name -> its values, batch by batch, the batches holding `sizes` samples) of the run `key`
    (run_key), replacing the run kept before, when they fit what the budget lets stages keep."""
    _KEPT.clear()
    memory.release(_KEPT_OWNER)
    size = sum(v.nbytes for vs in values.values() for v in vs)
    if memory.keep(_KEPT_OWNER, size, _KEPT.clear):
        _KEPT.update(key=key, sizes=list(sizes), values=values)


def kept_run(key: str, names: set[str], sizes: list[int]) -> dict[str, list[np.ndarray]] | None:
    """The kept values of `names` from the run `key` in batches of `sizes` samples (None: not kept so)."""
    if _KEPT.get("key") != key or _KEPT["sizes"] != list(sizes) or not names <= set(_KEPT["values"]):
        return None
    return {n: _KEPT["values"][n] for n in names}


def kept_batches(key: str) -> tuple[list[int], dict[str, list[np.ndarray]]] | None:
    """Every kept value of the run `key`, in the batches it ran: (their sizes, name -> its values); None: not kept."""
    if _KEPT.get("key") != key:
        return None
    return list(_KEPT["sizes"]), dict(_KEPT["values"])


def last_axis_absmax(value: np.ndarray, so_far: np.ndarray | None = None) -> np.ndarray:
    """max |x| per last-axis channel of `value`, folded into `so_far` (what SmoothQuant's scales read)."""
    m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
    return m if so_far is None else np.maximum(so_far, m)
