"""export.onnx — lower the torch module to ONNX with torch.onnx.export (dynamo), batch axis dynamic."""

from __future__ import annotations

import io
import logging
import re
import warnings
from contextlib import redirect_stdout, redirect_stderr
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.contracts import Context, Pass
from pipeline.errors import UsageError
from pipeline.registry import register_pass
from pipeline.state import ModelState
from passes.onnx_util import op_counts


class ExportError(UsageError):
    """The exporter could not lower the model; the message names the op and, when known, the layer."""


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    opset: int = Field(18, ge=17, le=23, description="ONNX opset of the exported graph")
    dynamic_batch: bool = Field(True, description="export axis 0 of every input as a dynamic 'batch' axis")


def export_onnx(module: Any, state: ModelState, opset: int = 18, dynamic_batch: bool = True) -> Any:
    """ModelProto of `module` for `state.inputs`; raises ExportError naming the failing op/layer."""
    import torch

    example = tuple(torch.from_numpy(a) for a in state.example_inputs(batch=2).values())
    dynamic = None
    if dynamic_batch:
        dims: dict[str, Any] = {}  # one Dim per axis name, so inputs sharing "batch" share the symbol
        dynamic = tuple(
            {i: dims.setdefault(d, torch.export.Dim(_identifier(d))) for i, d in enumerate(s.shape) if isinstance(d, str)}
            or None for s in state.inputs)
    names = [s.name for s in state.inputs]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notices
    quiet = io.StringIO()  # the dynamo exporter prints progress lines; deployc's instruments own the console
    try:
        with warnings.catch_warnings(), redirect_stdout(quiet), redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), example, dynamo=True, opset_version=opset,
                                        input_names=names, dynamic_shapes=dynamic, optimize=True,
                                        report=False, verbose=False)
    except Exception as exc:
        raise ExportError(describe_export_failure(exc, module)) from exc
    return program.model_proto


def _identifier(name: str) -> str:
    clean = re.sub(r"\W", "_", name)
    return clean if re.match(r"[A-Za-z_]", clean) else "d_" + clean


def describe_export_failure(exc: Exception, module: Any) -> str:
    """The first informative line of an exporter error plus the module layer it mentions, if any."""
    text = f"{type(exc).__name__}: {exc}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    op = next((m.group(0) for ln in lines for m in [re.search(r"(aten|prims|torch\.ops)\.[\w.]+", ln)] if m), None)
    layers = {n for n, _ in module.named_modules() if n}
    layer = next((n for ln in lines for n in sorted(layers, key=len, reverse=True) if re.search(rf"\b{re.escape(n)}\b", ln)), None)
    parts = ["ONNX export failed"]
    if op:
        parts.append(f"at op {op}")
    if layer:
        parts.append(f"in layer '{layer}'")
    return " ".join(parts) + f": {lines[0][:300] if lines else type(exc).__name__}"


@register_pass
class ExportOnnx(Pass):
    name = "export.onnx"
    Config = ExportConfig
    requires = frozenset({"torch"})
    produces = frozenset({"onnx"})

    def run(self, state: ModelState, ctx: Context) -> tuple[ModelState, bool, dict[str, Any]]:
        proto = export_onnx(state.module, state, self.config.opset, self.config.dynamic_batch)
        return state.replace(onnx=proto), True, {"nodes": len(proto.graph.node), "ops": op_counts(proto)}
