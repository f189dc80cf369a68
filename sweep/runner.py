"""Running a sweep on Ray: one task per build (with the resources the sweep file asks for), one task per shared
prefix, whose result every variant that starts with it reads from Ray's object store. Ray retries a task whose
worker died; a build that raises is not retried (it would fail the same way) and comes back as `failed`."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployc.core.config import load_config
from deployc.core.pyimport import user_modules
from deployc.core.timing import available_cpus
from deployc.driver.build import build, run_prefix
from deployc.errors import DeploycError, UsageError
from deployc.sweep.plan import Planned, PrefixNode, plan_prefixes
from deployc.sweep.search import Search


def start_ray(address: str | None, temp_dir: str | Path | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the cluster at `address`, else start an embedded one with `num_cpus` (default: the cores Ray
    finds, CPU quotas included). Returns whether this call started Ray (the caller then shuts it down)."""
    import ray

    if address:
        _check_reachable(address)
    if ray.is_initialized():  # a caller (a notebook, the tests) already connected this process
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report (and no network attempt) per run
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")  # a failed task's error is the variant's reason
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if os.environ.get("DEPLOYC_CACHE_DIR"):  # workers of a running cluster share the driver's pass cache path
        kwargs["runtime_env"] = {"env_vars": {"DEPLOYC_CACHE_DIR": os.environ["DEPLOYC_CACHE_DIR"]}}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                _temp_dir=str(temp_dir) if temp_dir else None,
                **kwargs,
            )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--address {address}" if address else "a local Ray"
        raise UsageError(f"{where}: cannot start or reach Ray: {exc}") from None
    _raylet_notices_to_log()
    return True


def check_local_cpus(address: str | None, resources: Any, where: Path) -> None:
    """Before an embedded Ray starts: a build asking for more CPUs than this machine has would never be scheduled
    (Ray waits forever for a node that fits it)."""
    if not address and resources.num_cpus > available_cpus():
        raise UsageError(
            f"{where}: resources.num_cpus: {resources.num_cpus}, but this machine has {available_cpus()} CPUs; "
            "no build could ever start (give at most that, or --address a cluster with larger nodes)"
        )


def check_cluster(resources: Any, where: Path) -> None:
    """After Ray starts: some live node must hold one build's CPUs, GPUs and memory, else Ray waits forever."""
    import ray

    need = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, "memory": resources.memory or 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
        return
    most = {k: max((node.get(k, 0) for node in nodes), default=0) for k in need}
    short = next(k for k, v in need.items() if v and most[k] < v)
    names = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}
    raise UsageError(
        f"{where}: resources.{names[short]}: {need[short]:g}, but the largest Ray node has {most[short]:g}; no build "
        "could ever start"
    )


def refuse_planted(folder: Path) -> None:
    """A variant's folder must be a real folder or absent: a link planted there is never built through."""
    if folder.is_symlink():
        raise UsageError(
            f"--out: '{folder}' is a symbolic link; a variant is never built into a link's target. Remove it"
        )
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out: '{folder}' is a file where the variant's build folder goes")


def _check_reachable(address: str) -> None:
    """ray.init retries an address nobody listens on for minutes, logging each try: refuse it in seconds instead."""
    if address == "auto":
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address {address}: give HOST:PORT (ray start --head prints it), ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _raylet_notices_to_log() -> None:
    """Ray prints every dead-worker notice on the driver's stdout (no option turns it off), which would corrupt
    `--json`; they go to Ray's logger instead: the variant's reason in sweep.json already says its worker died."""
    import ray._private.worker as ray_worker

    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None or getattr(printer, "deployc", False):
        return

    def route(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            logging.getLogger("ray").info("raylet: %s", " ".join(data.get("lines", [])))
        else:
            printer(data, ignore_prefix)

    route.deployc = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = route


def executor_info(address: str | None) -> dict[str, Any]:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = ray.cluster_resources().get("CPU", 0)
    return {"name": "ray", "version": ray.__version__, "nodes": len(nodes), "cpus": cpus, "address": address or "local"}


def _worker_setup(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the CPUs Ray reserved for this task, not every core of the node


def prefix_task(raw: dict, base_dir: str, passes: int, parent: list, cache: bool, threads: int) -> tuple[dict, Any]:
    """(a small summary for the driver, the PassPrefix for the variants): the driver never loads the model."""
    # the model goes through Ray's object store, which holds only objects this run made (not a user's pickle);
    # a torch.export round trip would change the graph each variant exports, and outputs would differ from a build
    import ray

    _worker_setup(threads)
    start = ray.get(parent[1]) if parent else None
    prefix = run_prefix(load_config(raw, Path(base_dir)), passes, start=start, cache=cache)
    for module in user_modules():  # the model's class travels with it: the reading worker never imported that file
        ray.cloudpickle.register_pickle_by_value(module)
    ran = prefix.state.history[start.passes if start else 0 :]
    return {"seconds": round(sum(r.seconds for r in ran), 3)}, prefix


def variant_task(raw: dict, base_dir: str, out: str, prefix: list, cache: bool, threads: int) -> dict[str, Any]:
    import ray

    _worker_setup(threads)
    try:
        refuse_planted(Path(out))
        start = ray.get(prefix[1]) if prefix else None
        result = build(load_config(raw, Path(base_dir)), out=out, quiet=True, cache=cache, start=start)
    except DeploycError as exc:
        return {"exit_code": exc.exit_code, "error": str(exc)}
    except Exception as exc:  # a bug in deployc or a library: reported with the variant, the others go on
        return {"exit_code": 1, "error": f"internal error: {type(exc).__name__}: {exc}"}
    return {"exit_code": result.exit_code, "manifest": result.manifest, "timings": result.timings}


def failure_text(exc: BaseException) -> str:
    """What a Ray error says in one line: the task's own exception, or how its worker died."""
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc).strip()
    kind = type(cause if cause is not None else exc).__name__
    return f"{kind}: {text.splitlines()[-1] if text else 'no message'}"[:500]


@dataclass
class Outcome:
    """What one variant's build came back with (a build task's return value, or why there is none)."""

    exit_code: int | None
    error: str | None = None
    manifest: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    prefix: str | None = None  # key of the shared prefix it started from
    resumed: bool = False


@dataclass
class PrefixRun:
    node: PrefixNode
    status: str = "pending"  # pending | running | done | failed
    refs: list[Any] = field(default_factory=list)  # [summary, PassPrefix] in Ray's object store
    error: str | None = None
    seconds: float = 0.0


class RayExecutor:
    """Submits prefix and build tasks as their inputs become ready, at most `max_parallel` at a time."""

    def __init__(self, out_dir: Path, resources: Any, retries: int, max_parallel: int | None, cache: bool):
        self.out_dir, self.resources, self.retries = out_dir, resources, retries
        self.max_parallel, self.cache = max_parallel, cache
        self.prefixes: dict[str, PrefixRun] = {}
        self.outcomes: dict[str, Outcome] = {}

    def _options(self) -> dict[str, Any]:
        r = self.resources
        opts = {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus, "max_retries": self.retries, "retry_exceptions": False}
        return opts | ({"memory": r.memory} if r.memory else {})

    def run(self, search: Search, check: Any, skip: Any, on_done: Any) -> None:
        """check(variant) -> Planned (raises UsageError); skip(planned) -> Outcome | None (--resume);
        on_done(planned, outcome) after each variant (progress, the search's feedback)."""
        import ray

        self._prefix_remote = ray.remote(prefix_task).options(num_returns=2, **self._options())
        self._build_remote = ray.remote(variant_task).options(**self._options())
        window = self.max_parallel or max(1, int(ray.cluster_resources().get("CPU", 1) // self.resources.num_cpus))
        self.queued: list[Planned] = []
        self.in_flight: dict[Any, tuple[str, Any, float]] = {}  # ref -> (kind, PrefixRun or Planned, submit time)
        exhausted = False
        while True:
            if not self.queued and not exhausted:
                batch = [check(v) for v in search.ask(window if search.adaptive else sys.maxsize)]
                exhausted = not batch
                for p in batch:
                    outcome = skip(p)
                    if outcome is not None:
                        self.outcomes[p.variant.id] = outcome
                        on_done(p, outcome)
                todo = [p for p in batch if p.variant.id not in self.outcomes]
                for node in plan_prefixes(todo, {k: r.node for k, r in self.prefixes.items()}):
                    self.prefixes[node.key] = PrefixRun(node)
                self.queued += todo
            for p in self._submit():
                on_done(p, self.outcomes[p.variant.id])
            if not self.in_flight:
                if self.queued:  # every queued variant waits on a prefix, and no prefix is running: a planning bug
                    raise RuntimeError(f"sweep: {len(self.queued)} variants wait on prefixes that never started")
                if exhausted:
                    return
                continue
            (ref,), _ = ray.wait(list(self.in_flight), num_returns=1)
            kind, item, t0 = self.in_flight.pop(ref)
            if kind == "prefix":
                try:
                    item.seconds = ray.get(ref)["seconds"]  # the summary: a failed prefix task raises here
                    item.status = "done"
                except Exception as exc:
                    item.status, item.error = "failed", failure_text(exc)
                continue
            try:
                result = ray.get(ref)
                outcome = Outcome(result["exit_code"], result.get("error"), result.get("manifest"))
                outcome.timings = result.get("timings") or {}
            except Exception as exc:  # the worker died more often than Ray retries, or Ray lost the task
                outcome = Outcome(None, f"its worker died: {failure_text(exc)}")
            outcome.seconds, outcome.prefix = time.perf_counter() - t0, self._prefix_of(item.variant.id)
            self.outcomes[item.variant.id] = outcome
            on_done(item, outcome)

    def _submit(self) -> list[Planned]:
        """Start what is ready (prefixes first: variants wait for them); returns variants failed by their prefix."""
        slots = (self.max_parallel or sys.maxsize) - len(self.in_flight)
        for run in self.prefixes.values():
            parent = self.prefixes[run.node.parent] if run.node.parent else None
            if run.status != "pending":
                continue
            if parent is not None and parent.status == "failed":
                run.status, run.error = "failed", parent.error
            elif slots > 0 and (parent is None or parent.status == "done"):
                cfg = run.node.config
                raw = cfg.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
                refs = parent.refs if parent else []
                run.refs = list(
                    self._prefix_remote.remote(
                        raw, str(cfg.base_dir), run.node.passes, refs, self.cache, self.resources.num_cpus
                    )
                )
                run.status = "running"
                self.in_flight[run.refs[0]] = ("prefix", run, time.perf_counter())
                slots -= 1
        failed = []
        for p in list(self.queued):
            key = self._prefix_of(p.variant.id)
            run = self.prefixes[key] if key else None
            if run is not None and run.status == "failed":
                self.queued.remove(p)
                self.outcomes[p.variant.id] = Outcome(
                    None, f"shared prefix '{run.node.label}' failed: {run.error}", prefix=key
                )
                failed.append(p)
            elif slots > 0 and (run is None or run.status == "done"):
                self.queued.remove(p)
                raw = p.config.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
                out = str(self.out_dir / p.variant.id)
                refs = run.refs if run else []
                ref = self._build_remote.remote(
                    raw, str(p.config.base_dir), out, refs, self.cache, self.resources.num_cpus
                )
                self.in_flight[ref] = ("variant", p, time.perf_counter())
                slots -= 1
        return failed

    def _prefix_of(self, variant_id: str) -> str | None:
        return next((k for k, r in self.prefixes.items() if variant_id in r.node.members), None)
