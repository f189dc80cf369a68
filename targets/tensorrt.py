"""Target `tensorrt`: TensorRT-conformant ONNX (fp32, fp16 network, explicit symmetric int8 Q/DQ), checked by a
GPU-free preflight, then built into an engine when TensorRT and a GPU are present (else validated with
onnxruntime on the same graph as a proxy, and the manifest says why no engine was built)."""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployc.compiler.contracts import Artifact, Context, Remedy, Target
from deployc.compiler.manager import run_pass
from deployc.core.config import REMEDY_STAGES
from deployc.core.ort import session
from deployc.core.state import ModelState, TensorSpec
from deployc.errors import PipelineError, UsageError
from deployc.passes.onnx_util import io_specs, op_counts
from deployc.passes.tensorrt_int8 import HighPrecision, TensorrtInt8, TensorrtInt8Config, int8_details
from deployc.storage.files import read_bytes, write_bytes_atomic
from deployc.targets.metadata import artifact_metadata, save_onnx, with_layout
from deployc.targets.onnx import lower_to_onnx, onnx_remedies, quantize_for
from deployc.targets.quantized_details import NothingInInt8, float_reasons, int8_coverage_of, quantized_details
from deployc.targets.tensorrt_support import preflight

Precision = Literal["fp32", "fp16", "int8"]
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
FUSED_ACTIVATIONS = {"Relu", "LeakyRelu", "Clip"}  # TensorRT fuses these into the weighted op before it


class AxisRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int = Field(1, ge=1)
    opt: int = Field(..., ge=1)
    max: int = Field(..., ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AxisRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"needs min ≤ opt ≤ max, got {self.min}/{self.opt}/{self.max}")
        return self


class TensorrtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    precision: list[Precision] = Field(default_factory=lambda: ["fp32"], min_length=1)
    profile: dict[str, AxisRange] = Field(
        default_factory=dict,
        description="dynamic axis name → {min, opt, max}; default 1 / data.batch_size / data.batch_size",
    )
    opset: int = Field(18, ge=17, le=23, description="opset used when this target exports the torch model itself")
    simplify: bool = Field(True, description="run the simplify pass before emitting")
    engine: bool = Field(True, description="build a TensorRT engine when TensorRT and a GPU are present")
    workspace_mb: int = Field(1024, ge=16, description="builder workspace memory limit")
    int8_high_precision: HighPrecision = Field(
        "fp16", description="what an int8 network's unquantized ops run in (TensorRT takes precision from the graph)"
    )


# ---- TensorRT conformance of Q/DQ made elsewhere (qat, a pipeline's quantize.int8): the rewrites they need ----


def _fold_int32_biases(proto: Any) -> int:
    """Replace DequantizeLinear(int32 bias) by its float value: TensorRT's DQ takes int8/fp8/int4 only."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    kept, folded = [], 0
    for n in proto.graph.node:
        x = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if x is None or x.data_type != TensorProto.INT32:
            kept.append(n)
            continue
        q = numpy_helper.to_array(x).astype(np.float64)
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64) if len(n.input) > 2 and n.input[2] else 0.0
        if scale.size > 1:  # per-channel: broadcast along the DQ axis
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
        proto.graph.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), n.output[0]))
        folded += 1
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return folded


def _drop_weighted_output_qdq(proto: Any) -> int:
    """Remove Q→DQ pairs between a weighted op and the activation it fuses with (or a graph output):
    TensorRT's placement rule is 'quantize the inputs of weighted ops, not their outputs'."""
    nodes = list(proto.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in proto.graph.output}
    dropped: set[int] = set()
    rename: dict[str, str] = {}
    for q in (n for n in nodes if n.op_type == "QuantizeLinear"):
        src, dqs = producer.get(q.input[0]), consumers[q.output[0]]
        if (
            src is None
            or src.op_type not in WEIGHTED_OPS
            or not dqs
            or any(d.op_type != "DequantizeLinear" for d in dqs)
        ):
            continue
        to_output = [d for d in dqs if d.output[0] in outputs]
        fused = all(c.op_type in FUSED_ACTIVATIONS for d in dqs for c in consumers[d.output[0]])
        if not fused or (to_output and (len(dqs) > 1 or len(consumers[q.input[0]]) > 1)):
            continue
        dropped |= {id(q)} | {id(d) for d in dqs}
        if to_output:  # the weighted op now writes the graph output itself
            src.output[list(src.output).index(q.input[0])] = to_output[0].output[0]
        else:
            rename.update({d.output[0]: q.input[0] for d in dqs})
    kept = [n for n in nodes if id(n) not in dropped]
    for n in kept:
        for k, name in enumerate(n.input):
            n.input[k] = rename.get(name, name)
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    return len(dropped) // 2


def _drop_unused_initializers(proto: Any) -> None:
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    kept = [i for i in proto.graph.initializer if i.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    names = {o for n in proto.graph.node for o in n.output} | used
    value_info = [v for v in proto.graph.value_info if v.name in names]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(value_info)


def conform_qdq(src: Any) -> tuple[Any, dict[str, int]]:
    """A copy of an explicitly quantized graph rewritten to TensorRT's Q/DQ rules."""
    import onnx

    proto = onnx.ModelProto()
    proto.CopyFrom(src)
    stats = {
        "int32_bias_folded": _fold_int32_biases(proto),
        "weighted_output_qdq_removed": _drop_weighted_output_qdq(proto),
    }
    _drop_unused_initializers(proto)
    onnx.checker.check_model(proto)
    return proto, stats


def shape_profile(
    inputs: tuple[TensorSpec, ...],
    ranges: dict[str, AxisRange],
    batch: int,
    seen: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input: fixed axes as declared, named (dynamic) axes from `ranges`; the batch axis
    defaults to 1 / batch / batch, other dynamic axes (e.g. an image's '?' height) to the size `seen` in the data."""
    default = AxisRange(min=1, opt=batch, max=batch)
    profile = {}
    for spec in inputs:
        data = (seen or {}).get(spec.name, ())
        axes = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int) and d > 0:
                axes.append(AxisRange(min=d, opt=d, max=d))
            elif isinstance(d, str) and d in ranges:
                axes.append(ranges[d])
            elif i > 0 and i < len(data):
                axes.append(AxisRange(min=data[i], opt=data[i], max=data[i]))
            else:
                axes.append(default)
        profile[spec.name] = {k: [getattr(a, k) for a in axes] for k in ("min", "opt", "max")}
    return profile


# ---- the engine: TensorRT's Python API, imported only here -------------------------------------------------


def engine_unavailable() -> str | None:
    """None when an engine can be built and run here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    try:
        import torch
    except ImportError:
        return "torch is needed for CUDA buffers"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return None


def build_engine(
    onnx_path: Path, engine_path: Path, profile: dict[str, dict[str, list[int]]], timing_cache: Path, workspace_mb: int
) -> dict[str, Any]:
    """Parse → strongly typed network (precision from its Q/DQ and casts) → serialized engine; returns build facts."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 10; always on (flag ignored) in 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"targets.tensorrt: the TensorRT parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    shapes = builder.create_optimization_profile()
    for name, s in profile.items():
        shapes.set_shape(name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(shapes)
    # through the I/O boundary: a regular file of bounded size, written atomically (never through a planted link)
    known = read_bytes(timing_cache, "tensorrt timing cache", 256 << 20) if timing_cache.is_file() else b""
    cache = config.create_timing_cache(known)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError(
            f"targets.tensorrt: TensorRT could not build an engine from {onnx_path.name} (see its log above)"
        )
    engine_path.write_bytes(bytes(serialized))
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    major, minor = torch.cuda.get_device_capability()
    return {
        "file": engine_path.name,
        "bytes": engine_path.stat().st_size,
        "tensorrt_version": trt.__version__,
        "compute_capability": f"{major}.{minor}",
        "device": torch.cuda.get_device_name(),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }


class EngineRunner:
    """Runs a serialized engine with its execution context; torch CUDA tensors hold the buffers."""

    def __init__(self, engine_path: Path):
        import tensorrt as trt

        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise UsageError(f"targets.tensorrt: could not deserialize {engine_path.name} on this GPU/TensorRT")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        keep = []  # device buffers must outlive the enqueue
        for name in self.inputs:
            dtype = self._trt.nptype(self.engine.get_tensor_dtype(name))
            t = torch.from_numpy(np.ascontiguousarray(batch[name], dtype=dtype)).cuda()
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        outs = {}
        for name in self.outputs:
            dtype = torch.from_numpy(np.empty(0, self._trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        stream.synchronize()
        return [outs[n].float().cpu().numpy() for n in self.outputs]


# ---- the target -------------------------------------------------------------------------------------------


def _remedy_option(ctx: Context, key: str, default: Any) -> Any:
    """A knob of this target a remedy trial sets (Remedy.options), else the target's own option."""
    return ctx.remedy.options.get(key, default) if ctx.remedy is not None else default


class TensorrtTarget(Target):
    name = "tensorrt"
    Options = TensorrtOptions
    quantize_fields = frozenset({"smoothing"})  # SmoothQuant before its int8 Q/DQ

    @classmethod
    def available(cls) -> str | None:
        # the conformant ONNX and its onnxruntime proxy need no GPU; the engine's absence is recorded per artifact
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (needed for the proxy validation)"
        return None

    @classmethod
    def requires_for(cls, options: TensorrtOptions) -> frozenset[str]:
        return TensorrtInt8.requires - {"onnx"} if "int8" in options.precision else frozenset()

    def __init__(self, options: TensorrtOptions):
        super().__init__(options)
        self._runners: dict[str, Any] = {}
        self._scored: set[str] = set()  # artifacts whose runs are scored, not timed (Target.scored_only)

    def remedy_stages(self, artifact: Artifact, lowered: ModelState) -> tuple[str, ...]:
        # explicit quantization is symmetric only: no symmetry stage; a graph a pass quantized keeps its Q/DQ
        if artifact.precision != "int8" or artifact.path is None or "quantized" in lowered.facts:
            return ()
        return tuple(s for s in REMEDY_STAGES if s != "symmetry")

    def remedies(self, stage: str, base: Remedy, artifact: Artifact, lowered: ModelState, ctx: Context) -> list[Remedy]:
        def int8(remedy: Remedy) -> ModelState:  # the trial's conformed Q/DQ network (its quantize.int8 is memoised)
            return self._network("int8", lowered, ctx.for_remedy(remedy, ctx.work_dir))[0]

        rest = base.options.get("high_precision", self.options.int8_high_precision)
        # fallback goes through the spec's exclude, which _network hands to tensorrt.int8: no Q/DQ around those nodes
        found = onnx_remedies(stage, base, lowered, int8, ctx, f"{rest} without Q/DQ")
        if stage == "fallback" and rest == "fp16":  # fp16 itself may be what misses the budget (CREPE full: 0.025)
            whole = Remedy("fallback", "the unquantized rest in fp32, not fp16", base.spec, {**base.options,
                           "high_precision": "fp32"})  # fmt: skip
            found = [whole, *found]
        return found

    def _network(
        self, precision: str, base: ModelState, ctx: Context, fallback: tuple[str, ...] = ()
    ) -> tuple[ModelState, dict[str, Any]]:
        """fp32 as is; fp16 by casting the network; int8 by TensorRT's Q/DQ placement with the rest in
        `int8_high_precision` (`fallback`: nodes left out of int8); Q/DQ made elsewhere rewritten to TensorRT's rules.
        Returns the network and what the artifact details say about its precision."""
        if precision == "int8" and "qat" not in base.facts:  # after qat the graph already carries its Q/DQ
            spec = {
                **ctx.config.quantize.model_dump(),
                "symmetric_activations": True,
                "fallback": list(fallback),
                "high_precision": _remedy_option(ctx, "high_precision", self.options.int8_high_precision),
            }
            done = run_pass(TensorrtInt8(TensorrtInt8Config.model_validate(spec)), base, ctx)
            return done, int8_details(done.history[-1].metrics)
        done = quantize_for(precision, base, ctx)
        if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in done.onnx.graph.node):
            return done, {}
        proto, stats = conform_qdq(done.onnx)
        return done.replace(onnx=proto), {"conformance": stats}

    def lower(self, state: ModelState, ctx: Context) -> ModelState:
        base = lower_to_onnx(state, ctx, self.options.opset, self.options.simplify)
        already = next((f.split(":", 1)[1] for f in base.facts if f.startswith("precision:")), None)
        if already and self.options.precision != ["fp32"]:
            raise PipelineError(
                f"targets.tensorrt.precision: a pass already quantized the graph ({already}); "
                "ask for [fp32] to emit it as is (preflight then checks its Q/DQ)",
                pass_name=self.name,
            )
        return base

    def emit(self, state: ModelState, base: ModelState, ctx: Context, precision: str) -> Artifact:
        import onnxruntime

        no_engine = engine_unavailable() if self.options.engine else "disabled by targets.tensorrt.engine: false"
        seen = {k: v.shape for k, v in ctx.validation.inputs.items()} if ctx.validation is not None else {}
        profile = shape_profile(state.inputs, self.options.profile, ctx.config.data.batch_size, seen)
        already = next((f.split(":", 1)[1] for f in base.facts if f.startswith("precision:")), None)
        done, stats = self._network(precision, base, ctx)
        label = already or precision
        report = preflight(done.onnx, profile, f"targets.tensorrt ({label})")
        path = ctx.work_dir / "tensorrt" / f"{ctx.config.name}.{label}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        ins, outs = (with_layout(e) for e in io_specs(done.onnx))
        metadata = artifact_metadata(ctx, self.name, label, ins, outs)
        save_onnx(done.onnx, path, metadata)
        details: dict[str, Any] = {"ops": op_counts(done.onnx), "preflight": report, "metadata": metadata}
        coverage = int8_coverage_of(label, done, ctx)
        if coverage is not None and not coverage.int8_ops:
            raise NothingInInt8(coverage, float_reasons(f"tensorrt/{label}", coverage, list(done.history), done.onnx))
        details.update(quantized_details(f"{self.name}/{label}", coverage, base, done, ctx))
        details.update(stats)
        runtime, version = "onnxruntime (TensorRT proxy)", onnxruntime.__version__
        perf: dict[str, Any] = {}
        if no_engine is None:
            # kept across builds in the pass cache's folder when there is one: it makes rebuilds fast
            enabled = ctx.cache is not None and ctx.cache.enabled
            cache = (ctx.cache.root if enabled else path.parent) / "tensorrt.timing-cache"
            built = build_engine(path, path.with_suffix(".engine"), profile, cache, self.options.workspace_mb)
            built["timing_cache"] = str(cache) if enabled else f"tensorrt/{cache.name}"
            details["engine"] = (
                f"built: {built['file']} (TensorRT {built['tensorrt_version']}, "
                f"compute capability {built['compute_capability']})"
            )
            perf["engine_build_seconds"] = built.pop("build_seconds")
            details["engine_build"] = built
            runtime, version = "tensorrt", built["tensorrt_version"]
        else:
            details["engine"] = f"not built ({no_engine})"
        return Artifact(
            target=self.name,
            precision=label,
            path=path,
            runtime=runtime,
            runtime_version=version,
            inputs=ins,
            outputs=outs,
            details=details,
            perf=perf,
            history=done.history[len(state.history) :],
        )

    def scored_only(self, artifact: Artifact) -> None:
        self._scored.add(str(artifact.path))

    def infer(self, artifact: Artifact, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        key = str(artifact.path)
        if key not in self._runners:
            engine = artifact.path.with_suffix(".engine")
            # the proxy runs Q/DQ as written (no fusion into onnxruntime's CPU int8 kernels, which saturate on x86
            # without VNNI): float math on the quantized values, as TensorRT's 32-bit accumulation computes them
            proxy = artifact.runtime != "tensorrt"
            spin = key not in self._scored  # a scored-only run's idle threads sleep: same outputs, less CPU
            self._runners[key] = session(key, None, optimize=False, spin=spin) if proxy else EngineRunner(engine)
        runner = self._runners[key]
        return runner(batch) if isinstance(runner, EngineRunner) else runner.run(None, batch)

    def close(self, artifact: Artifact) -> None:
        self._runners.pop(str(artifact.path), None)
        self._scored.discard(str(artifact.path))
