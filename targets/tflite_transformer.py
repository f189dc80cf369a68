"""The tflite target's int8 for transformer-style flatbuffers (attention: BATCH_MATMUL → SOFTMAX → BATCH_MATMUL),
and SmoothQuant at the torch level (quantize.smoothing) before litert-torch lowers the module.

Measured on all-MiniLM-L6-v2 (benchmarks/minilm_int8.py, ai-edge-quantizer, XNNPACK, one thread): the static
int8 recipe on every op drifts 0.46 in cosine (the -3.4e38 attention-mask SELECT_V2/ADD and SOFTMAX in int8, as in
ONNX; litert decomposes LayerNorm into MEAN/SQUARED_DIFFERENCE/RSQRT, int8 too). int8 FULLY_CONNECTED alone 0.065:
an int8 FC writes int8, and the FFN-down projection (the FC that reads GELU) loses its input's long tail and its
output's residual-stream outlier channels. 16-bit activations fix it (0.0005) but run 17× slower than fp32 (no
int16 XNNPACK kernel). So: static int8 FCs, the GELU-fed FCs dynamic-range (int8 weights, input quantized per
row at run time, float output: 0.006 overall, still int8 MACs), embedding tables int8 weight-only (the size), and
the rest float (attention scores, softmax, LayerNorm, residual adds) — listed as float ops in details.npu.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_SKIP = {"RESHAPE", "TRANSPOSE", "CAST"}


def _graph(model: bytes) -> tuple[Any, Any, Any]:
    from ai_edge_litert.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(model))
    return fb, m, m.subgraphs[0]


def _tensor_name(sg: Any, t: int) -> str:
    name = sg.tensors[t].name
    return name.decode() if isinstance(name, bytes) else str(name)


def transformer_ops(model: bytes) -> tuple[int, list[str]]:
    """(attention blocks: SOFTMAX between two BATCH_MATMULs, output tensor names of the FCs that read a GELU)."""
    fb, m, sg = _graph(model)
    name = {id(op): fb.opcode_to_name(m, op.opcodeIndex) for op in sg.operators}
    producer = {o: op for op in sg.operators for o in op.outputs}
    readers: dict[int, list[Any]] = {}
    for op in sg.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)

    def constant(t: int) -> bool:
        buffer = m.buffers[sg.tensors[t].buffer] if t >= 0 and sg.tensors[t].buffer else None
        return buffer is not None and (buffer.data is not None or bool(buffer.size))

    def source(t: int) -> str | None:  # the op behind a tensor, through reshapes and smoothing's constant MUL
        for _ in range(8):
            p = producer.get(t)
            if p is not None and name[id(p)] == "MUL" and any(constant(i) for i in p.inputs):
                t = next(i for i in p.inputs if not constant(i))
                continue
            if p is None or name[id(p)] not in _SKIP:
                return name[id(p)] if p is not None else None
            t = p.inputs[0]
        return None

    def reaches_matmul(t: int, depth: int = 0) -> bool:
        for r in readers.get(t, []):
            if name[id(r)] == "BATCH_MATMUL" or (
                name[id(r)] in _SKIP and depth < 4 and reaches_matmul(r.outputs[0], depth + 1)
            ):
                return True
        return False

    def from_scores(t: int, depth: int = 0) -> bool:
        p = producer.get(t)
        if p is None or depth > 8:
            return False
        return name[id(p)] == "BATCH_MATMUL" or any(
            from_scores(i, depth + 1) for i in p.inputs if i >= 0 and i in producer
        )

    attention = sum(
        1
        for op in sg.operators
        if name[id(op)] == "SOFTMAX" and from_scores(op.inputs[0]) and reaches_matmul(op.outputs[0])
    )
    gelu_fed = [
        _tensor_name(sg, op.outputs[0])
        for op in sg.operators
        if name[id(op)] == "FULLY_CONNECTED" and source(op.inputs[0]) == "GELU"
    ]
    return attention, gelu_fed


def transformer_recipe(manager: Any, granularity: Any, gelu_fed: list[str]) -> None:
    """Fill `manager` (ai-edge-quantizer RecipeManager) with the transformer int8 recipe described above."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.quantizer import AlgorithmName

    ops = qtyping.TFLOperationName
    fc = qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=False),
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=True, granularity=granularity),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
    )
    minmax = AlgorithmName.MIN_MAX_UNIFORM_QUANT
    manager.add_quantization_config(".*", ops.FULLY_CONNECTED, fc, minmax)
    manager.add_weight_only_config(".*", ops.EMBEDDING_LOOKUP, 8, granularity, minmax)
    for scope in gelu_fed:  # later entries win: these FCs run dynamic-range
        scope_regex = f"(?:^|;){re.escape(scope)}(?:;|$)"  # a scope is its op's output names joined by ';'
        manager.add_dynamic_config(scope_regex, ops.FULLY_CONNECTED, 8, granularity, minmax)


def _smoothed_linear(linear: Any, s: np.ndarray) -> Any:
    """A module computing y = (x / s) @ (W·s)ᵀ + b: the division stays a float MUL in front of the FC."""
    import torch

    class SmoothedLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            scale = torch.from_numpy(s.astype(np.float32))
            self.register_buffer("inv", 1.0 / scale)
            self.linear = torch.nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
            with torch.no_grad():
                self.linear.weight.copy_(linear.weight * scale[None, :])
                if linear.bias is not None:
                    self.linear.bias.copy_(linear.bias)

        def forward(self, x: Any) -> Any:
            return self.linear(x * self.inv)

    return SmoothedLinear()


def smooth_module(module: Any, batches: list[tuple[Any, ...]], alpha: float) -> tuple[Any, int]:
    """A copy of `module` whose nn.Linear layers are smoothed with `alpha` on the inputs seen in `batches`
    (SmoothQuant's s = max|X|^α / max|W|^(1−α) per input feature); returns (module, layers smoothed)."""
    import copy

    import torch

    from deployc.passes.smoothquant import smoothing_scales

    model = copy.deepcopy(module).eval()
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    seen: dict[str, np.ndarray] = {}

    def hook(name: str) -> Any:
        def record(_: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).numpy()
            seen[name] = np.maximum(seen[name], x) if name in seen else x

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    with torch.no_grad():
        for batch in batches:
            model(*batch)
    for h in handles:
        h.remove()
    for name, linear in linears.items():
        if name not in seen:
            continue
        s = smoothing_scales(seen[name], [linear.weight.detach().numpy().T], alpha)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _smoothed_linear(linear, s))
    _check_equal(module, model, batches[0])
    return model, len(seen)


def _check_equal(before: Any, after: Any, batch: tuple[Any, ...]) -> None:
    """The smoothed module computes the original's numbers (1e-4 of the largest output): else a bug here."""
    import torch

    with torch.no_grad():
        ref, got = before.eval()(*batch), after(*batch)
    ref, got = (ref if isinstance(ref, tuple) else (ref,)), (got if isinstance(got, tuple) else (got,))
    for a, b in zip(ref, got):
        err, scale = float((a - b).abs().max()), float(a.abs().max())
        if err > 1e-4 * max(scale, 1e-6):
            raise AssertionError(
                f"torch-level smoothing changed the module's outputs by {err:.3g} (largest {scale:.3g})"
            )
