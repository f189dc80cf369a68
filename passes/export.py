"""export.onnx — lower the torch module to ONNX with torch.onnx.export (dynamo), batch axis dynamic."""

from __future__ import annotations

import io
import logging
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.compiler.export_errors import user_location
from deployc.core.state import ModelState, dynamic_shapes
from deployc.errors import UsageError
from deployc.passes.onnx_util import op_counts


class ExportError(UsageError):
    """The exporter could not lower the model; the message names the op and, when known, the layer."""


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    opset: int = Field(18, ge=17, le=23, description="ONNX opset of the exported graph")
    dynamic_batch: bool = Field(True, description="export axis 0 of every input as a dynamic 'batch' axis")


def export_onnx(module: Any, state: ModelState, opset: int = 18, dynamic_batch: bool = True) -> Any:
    """ModelProto of `module` for `state.inputs`; raises ExportError naming the failing op/layer."""
    import torch

    example = state.example_tensors(batch=2)
    dynamic = dynamic_shapes(state.inputs) if dynamic_batch else None
    names = [s.name for s in state.inputs]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed" notices
    quiet = io.StringIO()  # the dynamo exporter prints progress lines; deployc's instruments own the console
    try:
        with warnings.catch_warnings(), redirect_stdout(quiet), redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval(),
                example,
                dynamo=True,
                opset_version=opset,
                input_names=names,
                dynamic_shapes=dynamic,
                optimize=True,
                report=False,
                verbose=False,
            )
    except Exception as exc:
        raise ExportError(describe_export_failure(exc, module, example)) from exc
    return program.model_proto


def _layer_of(module: Any, example: tuple, op: str) -> str | None:
    """The module path (e.g. 'layer2.conv1') whose forward calls `op`, from torch.export's module stack."""
    import torch

    try:
        ep = torch.export.export(module, example, strict=False)
    except Exception:
        return None
    short = op.split(".", 1)[1].split(".")[0]
    for node in ep.graph.nodes:
        if node.op == "call_function" and short in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            paths = [path for path, _ in stack.values() if path]
            cls = [getattr(t, "__name__", str(t)).rsplit(".", 1)[-1] for _, t in stack.values()]
            if paths:
                return f"{paths[-1]} ({cls[-1]})"
            return f"<top-level {type(module).__name__}.forward>"
    return None


def describe_export_failure(exc: Exception, module: Any, example: tuple = ()) -> str:
    """The failing op, the layer that calls it, the first line of the exporter's message, and the module path and
    source line of the user's code where tracing broke (shown without --debug)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(exc).__name__}: {exc}")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    op = next((m.group(0) for ln in lines for m in [re.search(r"(aten|prims)\.[\w]+(\.\w+)?", ln)] if m), None)
    parts = ["ONNX export failed"]
    if op:
        parts.append(f"at op {op}")
        layer = _layer_of(module, example, op) if example else None
        if layer:
            parts.append(f"in layer {layer}")
    summary = lines.index("## Exception summary") + 1 if "## Exception summary" in lines else 0
    cause = re.sub(r"^<class '[\w.]+'>: ", "", lines[summary]) if len(lines) > summary else type(exc).__name__
    where = user_location(exc, module)  # first: a table cell may cut the message's tail
    return " ".join(parts) + (f" — at {where} —" if where else ":") + f" {cause[:300]}"


class ExportOnnx(Pass):
    name = "export.onnx"
    Config = ExportConfig
    requires = frozenset({"torch"})
    produces = frozenset({"onnx"})

    cacheable = True

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        proto = export_onnx(state.module, state, self.config.opset, self.config.dynamic_batch)
        return PassResult(state.replace(onnx=proto), True, {"nodes": len(proto.graph.node), "ops": op_counts(proto)})


class ExportCheck:
    """Instrument: after a torch-level pass changes the model, check it still exports to ONNX, so a
    pass that breaks the graph fails right there, naming the layer, not in a target later."""

    def before_pass(self, name: str) -> None:
        pass

    def after_pass(self, name: str, state: ModelState, record: Any) -> None:
        if not record.modified or state.module is None or state.onnx is not None or "torch" not in state.facts:
            return
        try:
            export_onnx(state.module, state)
        except ExportError as exc:
            raise ExportError(f"the model no longer exports after pass '{name}': {exc}") from exc
