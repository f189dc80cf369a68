"""qat — quantization-aware training at the torch level (PT2E fake-quant from torchao, trained with the
shared loop passes.training.fit on ctx.train), then converted to a quantize/dequantize graph.

The onnx target exports that graph as it is: the dynamo exporter lowers torchao's quantize/dequantize
ops to QuantizeLinear/DequantizeLinear with the ranges QAT learned, so no ONNX calibration runs.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from pydantic import Field

from deployc.compiler.contracts import Context, Pass, PassResult
from deployc.core.state import ModelState, Table, dynamic_shapes
from deployc.passes.training import TrainConfig, fit


class QatConfig(TrainConfig):
    epochs: int = Field(3, ge=0, description="fine-tuning epochs with fake quantization")
    lr: float = Field(1e-4, gt=0, description="small: QAT nudges a trained model, it does not retrain it")
    per_channel: bool | None = Field(None, description="per-channel int8 weights; default: quantize.per_channel")


def _quantizer(per_channel: bool) -> Any:
    """The PT2E quantizer whose scheme onnxruntime's CPU kernels run best."""
    import warnings

    if per_channel:
        # uint8 affine activations, int8 symmetric per-channel weights: ORT's U8S8 QDQ scheme; it also
        # folds Conv→ReLU/ReLU6 into one quantized output
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        config = get_default_x86_inductor_quantization_config(is_qat=True)  # fake-quant specs
        # BN is folded before prepare, so annotate with the post-training patterns (conv+unary, conv+add+unary):
        # the QAT conv-bn patterns fail on torch 2.13 graphs ("more than one output node")
        return X86InductorQuantizer().set_global(dataclasses.replace(config, is_qat=False))
    # per-tensor weights: XNNPACK's scheme, which torchao keeps under testing since executorch took it over
    from torchao.testing.pt2e._xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XNNPACKQuantizer is deprecated")
        return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=False, is_qat=True))


def _export(module: Any, state: ModelState) -> Any:
    import torch

    graph = torch.export.export(
        module, state.example_tensors(batch=2), dynamic_shapes=dynamic_shapes(state.inputs)
    ).module()
    _out_of_place_activations(graph)
    return graph


def _out_of_place_activations(graph: Any) -> None:
    """Make activations match the x86 quantizer's conv(+add)+relu patterns: out-of-place ops (relu_ → relu
    where nothing else reads the input) and one source partition per call."""
    import torch

    swap = {
        torch.ops.aten.relu_.default: torch.ops.aten.relu.default,
        torch.ops.aten.hardtanh_.default: torch.ops.aten.hardtanh.default,
    }
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in swap and len(node.args[0].users) == 1:
            node.target = swap[node.target]
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            key, (fqn, cls) = list(stack.items())[-1]
            name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
            if name.rsplit(".", 1)[-1] in ("ReLU", "ReLU6", "Hardtanh"):
                # one partition per call: a ReLU module reused within a block would otherwise be one
                # partition with several outputs, which the quantizer's pattern matcher rejects
                stack[key] = (f"{fqn}#{node.name}", cls)
    graph.recompile()


def _train_eval_shim(graph: Any) -> Any:
    """Give an exported graph train()/eval() that switch dropout/BN ops and return the module, like nn.Module's."""
    import types

    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    def train(self: Any, mode: bool = True) -> Any:
        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self)
        return self

    graph.train = types.MethodType(train, graph)
    graph.eval = types.MethodType(lambda self: self.train(False), graph)
    return graph


def learned_ranges(converted: Any) -> list[dict[str, Any]]:
    """Scale and zero point of every activation quantize op in the converted graph (what QAT learned)."""
    rows = []
    for node in converted.graph.nodes:
        if (
            node.op == "call_function"
            and "quantize_per_tensor" in str(node.target)
            and "dequantize" not in str(node.target)
        ):
            src, scale, zp, qmin, qmax = node.args[:5]
            if isinstance(scale, float):
                rows.append(
                    {
                        "tensor": getattr(src, "name", str(src)),
                        "scale": scale,
                        "zero_point": int(zp),
                        "min": (qmin - zp) * scale,
                        "max": (qmax - zp) * scale,
                    }
                )
    return rows


def qat(module: Any, state: ModelState, ctx: Context, config: QatConfig, per_channel: bool) -> tuple[Any, Any]:
    """(converted QDQ GraphModule, FitResult): fold BN, insert fake quant, fine-tune, convert."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    graph = _export(copy.deepcopy(module).eval(), state)
    _fuse_conv_bn_(graph)  # BN folded first: convert_pt2e's QAT conv-bn folding re-traces patterns for ~45 s
    prepared = prepare_qat_pt2e(graph, _quantizer(per_channel))
    _train_eval_shim(prepared)  # fit() switches train/eval, which exported graphs refuse by default
    train_cfg = TrainConfig.model_validate(config.model_dump(include=set(TrainConfig.model_fields)))
    history = fit(prepared, ctx.train, train_cfg, ctx, [s.name for s in state.inputs], description="qat")
    converted = convert_pt2e(prepared)
    return _train_eval_shim(converted).eval(), history


class Qat(Pass):
    name = "qat"
    Config = QatConfig
    requires = frozenset({"torch", "data.train"})
    produces = frozenset({"qat", "quantized"})
    invalidates = frozenset({"onnx", "simplified"})
    reads_config = frozenset({"quantize"})  # per_channel defaults to quantize.per_channel

    def run(self, state: ModelState, ctx: Context) -> PassResult:
        per_channel = ctx.config.quantize.per_channel if self.config.per_channel is None else self.config.per_channel
        converted, history = qat(state.module, state, ctx, self.config, per_channel)
        ranges = learned_ranges(converted)
        last = history.history[-1] if history.history else {}
        metrics = {
            "epochs": len(history.history),
            "holdout_metric": last.get("holdout_metric"),
            "per_channel": per_channel,
            "activation_ranges": len(ranges),
        }
        table = Table(
            "qat: activation ranges learned by QAT",
            ("tensor", "scale", "zero point", "min", "max"),
            tuple(
                (r["tensor"], f"{r['scale']:.4g}", r["zero_point"], f"{r['min']:.4g}", f"{r['max']:.4g}")
                for r in ranges
            ),
        )
        # precision:int8 makes targets label what they lower from this graph int8, never fp32
        new_state = state.replace(module=converted, onnx=None, facts=state.facts | {"precision:int8"})
        return PassResult(new_state, True, metrics, (table,))
