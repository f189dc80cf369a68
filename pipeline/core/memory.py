"""The build's memory budget: how much memory its stages may hold for activations and statistics at once, and the
batch sizes that keep each stage inside it.

Every stage that runs samples through a graph (calibration, the fallback ranking, validation, latency) asks
`batch_for` how many samples one batch may hold, from the bytes one sample needs (`graph_activations`, from the
graph's shapes). A stage that cannot fit one sample raises MemoryBudgetExceeded, which the driver turns into that
artifact's `error` gate: the build goes on with the others instead of being killed by the kernel.

The budget is `build.max_memory` when set; else DEFAULT_SHARE of the memory available when the build starts
(MemAvailable, or what the cgroup still allows, whichever is less). It bounds the working data of one stage, on top
of the model and the libraries the process already holds; timings.json reports the process's peak RSS.

An estimate can be wrong (dynamic shapes, ops shape inference cannot size, runtimes' own arenas): a stage that
feeds its batches through a Guard has each batch's growth of the process's resident memory compared with what the
estimate predicted, and the following batches shrink to the cost measured (MemoryBudgetExceeded when one sample's
measured cost is over the budget). Batch sizes never change results: every stage reduces across batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import resource
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SHARE = (
    0.5  # of the memory available at the start: room for the runtimes' own buffers and the rest of the machine
)
# Above ~1 GiB of activations a batch runs no faster on a CPU (onnxruntime vectorises within each sample), and a
# smaller one keeps the build's peak down: batches stop growing there even when the budget allows more.
WORKING_SET = 1 << 30
_GIB = 1 << 30


class MemoryBudgetExceeded(MemoryError):
    """A stage needs more memory for one sample (or the model's fixed batch) than the budget allows."""


def size_text(n: float) -> str:
    """'1.5 GB', '340 MB', '12 kB' (decimal units, as `build.max_memory` reads them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tb": 10**12, "tib": 1 << 40})


def parse_size(value: int | float | str) -> int:
    """Bytes from 8000000000, '8GB', '8 GiB', '512MB' (ValueError naming what is wrong otherwise)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write e.g. 8GB or 512MiB")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        text = value.strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        number, unit = float(digits) if digits else -1.0, text[len(digits) :]
        if unit not in _UNITS:
            raise ValueError(f"{value!r}: unknown unit '{unit}'; write e.g. 8GB, 8GiB or 512MB")
    size = number * _UNITS[unit]
    if not np.isfinite(size) or size <= 0:
        raise ValueError(f"{value!r} is not a positive size; write e.g. 8GB or 512MiB")
    return int(size)


@dataclass(frozen=True)
class Budget:
    limit: int  # bytes one stage may hold for its samples' activations and statistics
    source: str  # "build.max_memory" or how the default was found

    def __str__(self) -> str:
        return f"{size_text(self.limit)} ({self.source})"

    def to_json(self) -> dict[str, Any]:
        return {"bytes": self.limit, "source": self.source}


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_bytes() -> tuple[int, str]:
    """Memory this process can still take: MemAvailable, less when a cgroup limit leaves less; with where from."""
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except OSError:
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:
            found.append((max(cap - used, 0), "cgroup limit"))
    if not found:  # no /proc (not Linux): what the pages of physical memory say
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory"
    return min(found)


def resolve(max_memory: int | None) -> Budget:
    """The budget of one build: build.max_memory, else DEFAULT_SHARE of what is available now."""
    if max_memory is not None:
        return Budget(int(max_memory), "build.max_memory")
    free, where = available_bytes()
    return Budget(int(free * DEFAULT_SHARE), f"default: {DEFAULT_SHARE:.0%} of {size_text(free)} {where}")


_CURRENT: ContextVar[Budget | None] = ContextVar("deployc_memory_budget", default=None)


@contextlib.contextmanager
def applied(budget: Budget) -> Iterator[Budget]:
    """Make `budget` the one every stage of this build sizes its batches by."""
    token = _CURRENT.set(budget)
    try:
        yield budget
    finally:
        _CURRENT.reset(token)


def current() -> Budget:
    """The build's budget (the default, resolved now, outside a build)."""
    return _CURRENT.get() or resolve(None)


# bytes a stage keeps between stages (activations memoized across remedy trials), by who keeps them, and how to free
# them: the other stages size their batches from what is left of the budget
_KEPT: dict[str, tuple[int, Callable[[], None]]] = {}
KEEP_SHARE = 4  # what is kept takes at most a quarter of the budget


def keep(owner: str, nbytes: int, drop: Callable[[], None]) -> bool:
    """Reserve `nbytes` of the budget for `owner` to keep between stages (replacing its earlier reservation);
    `drop` frees them. False, and nothing reserved, when all that is kept would exceed the budget / KEEP_SHARE."""
    others = sum(n for k, (n, _) in _KEPT.items() if k != owner)
    _KEPT.pop(owner, None)
    if others + nbytes > current().limit // KEEP_SHARE:
        return False
    _KEPT[owner] = (int(nbytes), drop)
    return True


def release(owner: str) -> None:
    """`owner` no longer keeps anything."""
    _KEPT.pop(owner, None)


def kept_bytes() -> int:
    """What the stages keep, within the current budget's share: kept under a larger budget (an earlier build in
    this process), it is dropped first."""
    total = sum(n for n, _ in _KEPT.values())
    if total > current().limit // KEEP_SHARE:
        drop_kept()
        return 0
    return total


def room_for(nbytes: int) -> bool:
    """Whether `nbytes` more fit the budget beside what the stages keep (nothing is dropped: a stage asking whether
    it may hold more than it needs, e.g. a second batch in flight)."""
    return nbytes <= current().limit - kept_bytes()


def drop_kept() -> None:
    """Free everything the stages keep (it is only ever a saving for a later trial)."""
    for _, drop in list(_KEPT.values()):
        drop()
    _KEPT.clear()


def batch_for(per_sample: int, wanted: int, what: str, fixed: int | None = None) -> int:
    """Samples per batch for a stage whose batch holds `per_sample` bytes per sample: at most `wanted`, and no more
    than the budget less what is kept (keep) and WORKING_SET allow; `fixed`: the model's batch axis has this size,
    so it is that or nothing. Raises MemoryBudgetExceeded naming `what` when not even one sample (or the fixed
    batch) fits."""
    budget = current()
    kept = kept_bytes()
    need = max(int(per_sample), 1)
    least = fixed or 1
    if kept and need * least > budget.limit - kept:  # what is kept for later trials yields to a stage that needs it
        drop_kept()
        kept = 0
    limit = budget.limit - kept
    if need * least > limit:
        n = f"one batch of {fixed} samples (the model's fixed batch)" if fixed else "one sample"
        held = f" ({size_text(kept)} of it kept for remedy trials)" if kept else ""
        raise MemoryBudgetExceeded(
            f"{what} needs {size_text(need * least)} for {n}, more than the memory budget {budget}{held}; "
            f"raise build.max_memory or use a machine with more memory"
        )
    if fixed:
        return fixed
    return max(1, min(int(wanted), min(limit, WORKING_SET) // need))


def peak_rss_bytes() -> int:
    """The most resident memory this process has held so far (Linux reports kB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_bytes() -> int:
    """The resident memory this process holds now (/proc/self/statm; the peak so far where there is none)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_bytes()
    return pages * _PAGE


_PAGE = resource.getpagesize()
# growth a batch may show beyond its estimate before the guard believes it: the interpreter's own allocations,
# allocator rounding and pages a runtime touches once
SLACK = 1.25
NOISE = 8 << 20


@dataclass(frozen=True)
class Mark:
    """The process's resident memory (now and peak) before a batch runs."""

    rss: int
    peak: int

    @staticmethod
    def now() -> Mark:
        return Mark(rss_bytes(), peak_rss_bytes())

    def grown(self) -> int:
        """Bytes the process grew by since: what it holds now, or its new peak when the batch raised the peak (a
        runtime that freed its buffers before returning shows only there)."""
        peak = peak_rss_bytes()
        return max(rss_bytes(), peak if peak > self.peak else 0) - self.rss


class Guard:
    """Batch sizes for one stage: from the estimated bytes a sample, shrunk when a batch makes the process grow by
    more than the estimate said; MemoryBudgetExceeded naming `what` when a batch shows one sample costs more than the
    budget. With no estimate, or one that guessed some tensors' sizes (`probe`), the first batch holds one sample
    more than the runtime has run (warmed) and the batches after it are sized from what it measured.

    Runtimes keep their arenas: a batch shows growth only for the samples beyond the largest batch run before (the
    warm-up included), so a batch's cost a sample is its growth over those. Warm the runtime up on a sample before
    the first batch (warmed()), so what it allocates once is not counted as the samples'."""

    def __init__(
        self, per_sample: int | None, wanted: int, what: str, fixed: int | None = None, probe: bool = False
    ) -> None:
        self.wanted, self.what, self.fixed = int(wanted), what, fixed
        self.estimate = None if per_sample is None else max(int(per_sample), 1)
        self.per_sample = self.estimate or 1
        self.probe = probe or self.estimate is None
        self.held = 0  # the largest batch the runtime has run: what its arena already holds
        self.size = batch_for(self.per_sample, wanted, what, fixed)  # one sample must fit by the estimate too
        if self.probe:
            self.size = fixed or 1
        self.sizes: list[int] = []  # each batch's samples, in order (what the stage ran)
        self.measured: list[int] = []  # each batch's growth of the process's resident memory, bytes

    def warmed(self, n: int) -> None:
        """The runtime has run a batch of `n` samples outside the guard (opened on it)."""
        self.held = max(self.held, n)
        if self.probe and not self.sizes and not self.fixed:
            self.size = min(self.wanted, n + 1)

    def observe(self, n: int, grown: int) -> None:
        """Take one batch of `n` samples whose run made the process grow by `grown` bytes."""
        probed = self.probe and not self.sizes  # the probe: the batches after it may grow
        self.sizes.append(n)
        self.measured.append(grown)
        new = n - self.held if n > self.held else n  # samples the arena had no room for yet
        self.held = max(self.held, n)
        if grown <= self.per_sample * new * SLACK + NOISE:
            if probed:
                self.size = batch_for(self.per_sample, self.wanted, self.what, self.fixed)
            return
        self.per_sample = -(-grown // new)
        said = f", estimated {size_text(self.estimate * new)}" if self.estimate else ", no estimate"
        what = f"{self.what} (measured: the process grew {size_text(grown)} for {new} more samples{said})"
        size = batch_for(self.per_sample, self.wanted, what, self.fixed)
        self.size = size if probed else min(self.size, size)


# ---- bytes per sample, from a graph's shapes ----------------------------------------------------------------


@dataclass(frozen=True)
class Activations:
    """What one sample makes a graph hold, from its shapes (onnx shape inference at batch 1)."""

    tensors: dict[str, int]  # bytes of each non-constant tensor (inputs and every node's outputs)
    peak: int  # most bytes alive at once when the graph runs in node order, freeing each tensor after its last use
    unsized: int = 0  # tensors whose size was guessed (shape inference could not tell): the guard probes first

    def exposed(self, names: list[str] | set[str]) -> int:
        """Bytes per sample of a run that returns `names` besides what the run itself holds at its peak."""
        return self.peak + sum(self.tensors.get(n, 0) for n in set(names))


_ESTIMATES: dict[str, Activations] = {}


def _elem_bytes(elem_type: int) -> int:
    from onnx import helper

    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:  # string or an exotic type: count it as 4 bytes a value
        return 4


def _shapes(proto: Any, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Bytes of every tensor whose shape inference (onnx's, then onnxruntime's symbolic) finds, at these feeds."""
    import onnx

    model = type(proto)()
    model.CopyFrom(proto)
    for value in model.graph.input:
        if value.name in feeds:
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for d in np.shape(feeds[value.name]):
                shape.dim.add().dim_value = int(d)
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph onnx cannot infer (contrib ops): what its file declares
        inferred = model
    sizes = _sized(inferred)
    produced = {o for n in model.graph.node for o in n.output if o}
    if not produced <= set(sizes):
        import tempfile

        # symbolic inference knows onnxruntime's contrib ops; it saves temp files into the CWD when it gives up
        with contextlib.suppress(Exception), tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            sizes = {**_sized(SymbolicShapeInference.infer_shapes(model, auto_merge=True)), **sizes}
    return sizes


def _sized(model: Any) -> dict[str, int]:
    sizes = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.HasField("shape") and all(d >= 0 for d in dims):
            sizes[v.name] = int(np.prod(dims, dtype=np.int64)) * _elem_bytes(t.elem_type)
    return sizes


def graph_activations(proto: Any, feeds: dict[str, np.ndarray]) -> Activations:
    """Bytes one sample makes `proto` hold (feeds: one sample of each input, as fed). A tensor whose shape
    inference cannot size counts as the largest one it can (memoized per graph and feed shapes)."""
    digest = hashlib.sha256(proto.SerializeToString(deterministic=True))
    digest.update(repr(sorted((k, np.shape(v)) for k, v in feeds.items())).encode())
    key = digest.hexdigest()
    if key not in _ESTIMATES:
        _ESTIMATES[key] = _estimate(proto, feeds)
    return _ESTIMATES[key]


def _estimate(proto: Any, feeds: dict[str, np.ndarray]) -> Activations:
    sizes = _shapes(proto, feeds)
    consts = {i.name for i in proto.graph.initializer}
    nodes = list(proto.graph.node)
    inputs = [i.name for i in proto.graph.input if i.name not in consts]
    names = inputs + [o for n in nodes for o in n.output if o and o not in consts]
    biggest = max((sizes[n] for n in names if n in sizes), default=0)
    tensors = {n: sizes.get(n, biggest) for n in dict.fromkeys(names)}
    steps = [(list(n.input), [o for o in n.output if o]) for n in nodes]
    peak = live_peak(inputs, steps, tensors, {o.name for o in proto.graph.output})
    return Activations(tensors, peak, sum(1 for n in tensors if n not in sizes))


def live_peak(inputs: list[Any], steps: list[tuple[list[Any], list[Any]]], tensors: dict[Any, int], keep: set) -> int:
    """Most bytes alive at once when `steps` ((reads, writes) of each op, in order) run from `inputs`, each tensor
    freed after its last reader unless it is in `keep` (the outputs); `tensors`: the bytes of each non-constant
    tensor (others, e.g. weights, are not counted)."""
    last_use = {}
    for i, (reads, _) in enumerate(steps):
        for t in reads:
            last_use[t] = i
    live = peak = sum(tensors.get(t, 0) for t in set(inputs))
    for i, (reads, writes) in enumerate(steps):
        live += sum(tensors.get(o, 0) for o in writes)
        peak = max(peak, live)
        freed = {t for t in reads if t in tensors and last_use.get(t) == i and t not in keep}
        freed |= {o for o in writes if o in tensors and o not in last_use and o not in keep}  # never read
        live -= sum(tensors[t] for t in freed)
    return int(peak)


def file_activations(path: str | Path, feeds: dict[str, np.ndarray]) -> Activations | None:
    """graph_activations of an ONNX file (weights kept on disk); None for a file that is not ONNX."""
    import onnx

    if Path(path).suffix != ".onnx":
        return None
    return graph_activations(onnx.load(str(path), load_external_data=False), feeds)


def module_activations(module: Any, names: list[str], feed: dict[str, np.ndarray]) -> Activations | None:
    """Bytes one run of a torch module on `feed` (one sample; `names`: its inputs in order) makes it hold: the most
    bytes alive at once among the tensors its leaf modules take and return (each storage counted once, from when a
    leaf first sees it until Python frees it), as the run goes. Tensors made and dropped between leaves (functional
    ops) are not seen: the guard measures what the estimate misses. None when the module fails on the sample (its
    own run then says how)."""
    import weakref

    import torch

    sizes: dict[str, int] = {}
    alive: dict[int, int] = {}  # storage address -> bytes, while a tensor a leaf saw on it lives
    peak = [0]

    def track(tensors: list[Any]) -> None:
        for t in tensors:
            key = t.untyped_storage().data_ptr()
            if key and key not in alive:
                alive[key] = t.untyped_storage().nbytes()
                weakref.finalize(t, alive.pop, key, None)
        peak[0] = max(peak[0], sum(alive.values()))

    def seen(name: str) -> Any:
        def hook(_module: Any, inputs: Any, output: Any) -> None:
            track(_flat(inputs) + _flat(output))
            sizes[name] = max(sizes.get(name, 0), sum(t.numel() * t.element_size() for t in _flat(output)))

        return hook

    args = [torch.from_numpy(np.asarray(feed[n])) for n in names]
    leaves = [(n, m) for n, m in module.named_modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(seen(n or "module")) for n, m in leaves]
    try:
        with torch.no_grad():
            track(list(args))
            returned = module(*args)
            track(_flat(returned))
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    return Activations(sizes, peak[0])


def module_estimate(module: Any, names: list[str]) -> Callable[[dict[str, np.ndarray]], Activations | None]:
    """module_activations of `module` as a function of one sample's feed (what Dataset.within_budget takes)."""
    return lambda feed: module_activations(module, names, feed)


def _flat(value: Any) -> list[Any]:
    """The tensors in a module's output (a tensor, or tuples, lists and dicts of them)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat(v)]
    return []
