"""The torch module as the tflite target hands it to litert-torch: inputs and outputs named as on every other target
(never args_0/output_0), 4-D inputs and outputs channels-last (NHWC, what TFLite kernels and NPUs compute in) unless
`layout: nchw`, spatial reductions kept 4-D so they stay NHWC, and tensor names free of the module's file path.

Why each step:
- litert-torch names signature inputs after keyword arguments and outputs after the keys of a returned dict.
- litert-torch computes in NHWC and puts a TRANSPOSE wherever an NCHW tensor enters or leaves; with NHWC at the
  edges its layout pass removes them (Ethos-U runs a TRANSPOSE, but it costs time and SRAM).
- `x.mean((2, 3))` returns a 2-D tensor, which litert's layout pass will not treat as NHWC: it transposes back
  to NCHW and reduces over axes [2, 3], which is W and C in NHWC terms, and Vela puts that MEAN on the CPU
  ("Unsupported depth-reduction"). The same reduction with keepdim and a reshape after it is a MEAN over H, W.
- litert names tensors after torch.export's module stack, whose entries carry each class's module name; a model
  from 'file.py:callable' lives in a module named after the file's path (deployc_user_<hash>), so the same model
  in another folder gave other bytes. Only the class name is kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from deployc.core.state import ModelState
from deployc.data.reference import flat_outputs

Layout = Literal["nhwc", "nchw"]
WRAPPED = "model"  # the attribute the user's module sits under in the wrapper


@dataclass(frozen=True)
class EdgeSignature:
    """Names and layouts of the flatbuffer's inputs and outputs, in the model's order (layout None: not 4-D)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_layouts: tuple[str | None, ...]
    output_layouts: tuple[str | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": dict(zip(self.inputs, self.input_layouts)),
            "outputs": dict(zip(self.outputs, self.output_layouts)),
        }


def _edge_io() -> type:
    import torch

    class EdgeIO(torch.nn.Module):
        """Keyword inputs (their names become the signature's), NHWC ↔ NCHW at the edges, a dict of named outputs."""

        def __init__(self, model: Any, signature: EdgeSignature):
            super().__init__()
            setattr(self, WRAPPED, model)
            self.signature = signature

        def forward(self, **inputs: Any) -> dict[str, Any]:
            sig = self.signature
            args = [
                inputs[n].permute(0, 3, 1, 2) if layout == "nhwc" else inputs[n]
                for n, layout in zip(sig.inputs, sig.input_layouts)
            ]
            outs = flat_outputs(getattr(self, WRAPPED)(*args))
            return {
                n: o.permute(0, 2, 3, 1) if layout == "nhwc" else o
                for n, o, layout in zip(sig.outputs, outs, sig.output_layouts)
            }

    return EdgeIO


def is_image(shape: tuple[int | str, ...] | list[int], dtype: str) -> bool:
    """What channels-last applies to: 4-D floating tensors (N, C, H, W)."""
    return len(shape) == 4 and str(dtype).startswith(("float", "bfloat"))


def edge_signature(state: ModelState, names_for: Callable[[int], list[str]], layout: Layout) -> EdgeSignature:
    """The signature of `state.module` at batch 1: its outputs named by names_for(count), and which inputs and
    outputs are 4-D, hence NHWC when asked."""
    import torch

    sample = state.example_tensors(batch=1)
    with torch.no_grad():
        outs = flat_outputs(state.module.eval()(*sample))
    nhwc = layout == "nhwc"
    return EdgeSignature(
        inputs=tuple(s.name for s in state.inputs),
        outputs=tuple(names_for(len(outs))),
        input_layouts=tuple(("nhwc" if nhwc else "nchw") if is_image(s.shape, s.dtype) else None for s in state.inputs),
        output_layouts=tuple(
            ("nhwc" if nhwc else "nchw") if is_image(tuple(o.shape), str(o.dtype).removeprefix("torch.")) else None
            for o in outs
        ),
    )


def sample_kwargs(state: ModelState, signature: EdgeSignature) -> dict[str, Any]:
    """Batch-1 example inputs by name, in the flatbuffer's layout."""
    return {
        name: (t.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else t)
        for name, t, layout in zip(signature.inputs, state.example_tensors(batch=1), signature.input_layouts)
    }


def edge_module(state: ModelState, signature: EdgeSignature) -> tuple[Any, dict[str, Any]]:
    """(module, sample kwargs) to give litert_torch.convert: the wrapped model exported with torch.export, its
    spatial reductions kept 4-D and its module stack stripped of module paths, as a GraphModule."""
    import torch

    kwargs = sample_kwargs(state, signature)
    wrapper = _edge_io()(state.module.eval(), signature).eval()
    program = torch.export.export(wrapper, (), kwargs, strict=False)
    keep_reductions_4d(program.graph_module.graph)
    for node in program.graph_module.graph.nodes:
        if "nn_module_stack" in node.meta:
            node.meta["nn_module_stack"] = canonical_stack(node.meta["nn_module_stack"])
    program.graph_module.recompile()
    return program.module(), kwargs


def canonical_stack(stack: dict[str, tuple[str, Any]]) -> OrderedDict[str, tuple[str, str]]:
    """torch.export's module stack without the wrapper level and with class names only: ('model.stem.0',
    'deployc_user_1f2e.Net') becomes ('stem.0', 'Net')."""
    out: OrderedDict[str, tuple[str, str]] = OrderedDict()
    for key, (path, kind) in stack.items():
        if not path:  # the wrapper itself
            continue
        if path == WRAPPED or path.startswith(WRAPPED + "."):
            path = path[len(WRAPPED) :].lstrip(".")
        name = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
        out[key] = (path, name.rsplit(".", 1)[-1])
    return out


def keep_reductions_4d(graph: Any) -> int:
    """Rewrite mean/sum/amax/amin over H and/or W of a 4-D tensor without keepdim as the same reduction with keepdim
    followed by a reshape (same values); returns how many were rewritten."""
    import torch

    aten = torch.ops.aten
    reductions = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default}
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in reductions:
            continue
        args = list(node.args)
        source, dims = args[0], args[1] if len(args) > 1 else node.kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else node.kwargs.get("keepdim", False)
        value, out = source.meta.get("val"), node.meta.get("val")
        if keepdim or value is None or out is None or value.dim() != 4 or not dims:
            continue
        if any(not isinstance(d, int) for d in list(out.shape) + list(dims)):
            continue
        if not {d % 4 for d in dims} <= {2, 3}:
            continue
        kwargs = {k: v for k, v in node.kwargs.items() if k not in ("dim", "keepdim")}
        with graph.inserting_before(node):
            kept = graph.call_function(node.target, (source, list(dims), True, *args[3:]), kwargs)
            kept.meta = dict(node.meta)
            flat = graph.call_function(aten.view.default, (kept, list(out.shape)))
            flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


def to_layout(x: np.ndarray, layout: str | None) -> np.ndarray:
    """A batch in the model's NCHW as the flatbuffer takes it."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "nhwc" else x


def from_layout(y: np.ndarray, layout: str | None) -> np.ndarray:
    """A flatbuffer output back in the model's NCHW, as the reference has it."""
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if layout == "nhwc" else y
