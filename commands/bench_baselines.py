"""What `deployc bench` measures: the baselines people would otherwise ship (torch eager fp32, onnxruntime on a
plain export, a plain `onnxruntime.quantization.quantize_static`, litert-torch's default conversion) and a
build's artifacts, each as a Candidate that opens into a runner."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.ort import CalibrationReader, session
from deployc.core.state import dynamic_shapes
from deployc.data.reference import as_arrays

# the baselines' names, in bench's table and in its ratio columns
EAGER = "torch eager fp32"
EAGER_1T = "torch eager fp32, 1 thread"
QSTATIC = "ort quantize_static (plain)"

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Candidate:
    """One thing to measure: `open()` loads it (session, interpreter) and returns its runner."""

    name: str
    kind: str  # "artifact" or "baseline"
    open: Callable[[], Runner]
    bytes: int | None = None
    close: Callable[[], None] = lambda: None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _torch_runner(module: Any, names: list[str], threads: int) -> Runner:
    """Eager inference with `threads` intra-op threads, set on every call: the two eager candidates take turns
    in the same process, and each must run with its own thread count."""
    import torch

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return as_arrays(module(*[torch.from_numpy(batch[n]) for n in names]))

    return run


def _ort_runner(path: Path) -> Runner:
    sess = session(path)
    return lambda batch: sess.run(None, batch)


def _eager_candidates(module: Any, names: list[str]) -> list[Candidate]:
    """Eager with torch's default threads, and with one thread: on a busy machine OpenMP's spinning threads
    can cost eager 10×, so both are shown."""
    import torch

    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    default = torch.get_num_threads()
    return [
        Candidate(EAGER, "baseline", lambda: _torch_runner(module, names, default), weight_bytes),
        Candidate(
            EAGER_1T,
            "baseline",
            lambda: _torch_runner(module, names, 1),
            weight_bytes,
            close=lambda: torch.set_num_threads(default),
        ),
    ]


def _plain_export(module: Any, state: Any, path: Path) -> Path:
    """torch.onnx.export (dynamo) with its defaults and a dynamic batch axis; no deployc passes."""
    import torch

    program = torch.onnx.export(
        module,
        state.example_tensors(batch=2),
        dynamo=True,
        input_names=[s.name for s in state.inputs],
        dynamic_shapes=dynamic_shapes(state.inputs),
    )
    program.save(str(path))
    return path


def _plain_quantize_static(src: Path, calibration: Any, samples: int, path: Path) -> Path:
    """onnxruntime.quantization.quantize_static with every option at its default."""
    from onnxruntime.quantization import quantize_static

    quantize_static(str(src), str(path), CalibrationReader(calibration.take(samples), 16))
    return path


def _litert_runner(path: Path) -> Runner:
    """ai-edge-litert Interpreter on a batch-1 .tflite; larger batches run row by row."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def one(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        for detail, arr in zip(ins, batch.values()):
            interp.set_tensor(detail["index"], arr)
        interp.invoke()
        return [interp.get_tensor(o["index"]).copy() for o in outs]

    def run(batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = [one({k: v[i : i + 1] for k, v in batch.items()}) for i in range(len(next(iter(batch.values()))))]
        return [np.concatenate([r[j] for r in rows]) for j in range(len(outs))]

    return run


def _litert_default(module: Any, state: Any, path: Path) -> Path:
    import litert_torch

    litert_torch.convert(module.eval(), state.example_tensors(batch=1)).export(str(path))
    return path


def baseline_candidates(state: Any, calibration: Any, samples: int, work: Path) -> list[Candidate]:
    """Eager, ORT fp32 of a plain export, plain quantize_static, litert-torch default (torch models)."""
    names = [s.name for s in state.inputs]
    cands: list[Candidate] = []
    plain = work / "plain.fp32.onnx"
    if state.module is not None:
        module = state.module.eval()
        cands += _eager_candidates(module, names)
        made = _guard(lambda: _plain_export(module, state, plain))
    else:
        import onnx

        onnx.save(state.onnx, str(plain))
        made = None
    cands.append(_file_candidate("ort fp32 (plain export)", plain, _ort_runner, made))
    qpath = work / "plain.qstatic.onnx"
    qmade = made or (None if calibration is not None else "no calibration data")
    if qmade is None:
        qmade = _guard(lambda: _plain_quantize_static(plain, calibration, samples, qpath))
    cands.append(_file_candidate(QSTATIC, qpath, _ort_runner, qmade))
    if state.module is not None:
        tpath = work / "litert.default.tflite"
        tmade = _guard(lambda: _litert_default(state.module, state, tpath))
        cands.append(_file_candidate("litert-torch default (batch 1)", tpath, _litert_runner, tmade))
    return cands


def _guard(fn: Callable[[], Any]) -> str | None:
    """None when fn ran, else why not — a baseline that fails to build is reported, not fatal."""
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static and litert-torch log progress; bench logs its own lines
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            fn()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    finally:
        root.setLevel(level)


def skipped(name: str, kind: str, reason: str) -> Candidate:
    def unavailable() -> Runner:
        raise RuntimeError(reason)

    return Candidate(name, kind, unavailable, skipped=reason)


def _file_candidate(name: str, path: Path, runner: Callable[[Path], Runner], failed: str | None) -> Candidate:
    if failed:
        return skipped(name, "baseline", failed)
    return Candidate(name, "baseline", lambda: runner(path), path.stat().st_size)


def artifact_candidates(manifest: dict[str, Any], build_dir: Path) -> list[Candidate]:
    """Each artifact of the manifest, run through its Target's infer() from the registry."""
    from deployc.compiler.contracts import Artifact
    from deployc.compiler.registry import get_target

    cands = []
    for a in manifest["artifacts"]:
        label = f"{a['target']}/{a['precision']}"
        gate = a.get("gate") or {}
        if gate.get("status") == "skipped" or not a.get("path"):
            cands.append(skipped(label, "artifact", gate.get("reason") or "not built"))
            continue
        try:
            cls = get_target(a["target"])
            target = cls(cls.Options.model_validate(manifest["config"]["targets"].get(a["target"]) or {}))
        except Exception as exc:
            cands.append(skipped(label, "artifact", str(exc.args[0] if exc.args else exc)))
            continue
        art = Artifact(
            a["target"],
            a["precision"],
            build_dir / a["path"],
            a.get("runtime", ""),
            a.get("runtime_version", ""),
            a.get("inputs") or [],
            a.get("outputs") or [],
            a.get("details") or {},
        )
        cands.append(
            Candidate(
                label,
                "artifact",
                lambda t=target, x=art: lambda b: t.infer(x, b),
                a.get("bytes"),
                close=lambda t=target, x=art: t.close(x),
                extra={"gate": gate.get("status")},
            )
        )
    return cands
