"""A torch mirror of a quantize/dequantize ONNX graph, for quantization-aware fine-tuning at the ONNX level.

Executes the QDQ graph's nodes with torch ops. Each weight DequantizeLinear(int8 initializer) becomes a fake
quantization of a float Parameter (per-channel symmetric int8, the scale recomputed from the weight as
onnxruntime's quantizer does); each activation QuantizeLinear -> DequantizeLinear pair becomes a fake quantization
with the graph's calibrated scale and zero point; both pass gradients straight through inside the range. In fp32
mode every fake quantization is the identity and the biases are the float graph's, so the mirror computes the fp32
graph. Hand-written because onnx2torch imports torchvision, which is not installable beside torch 2.13 here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

FLOAT_OPS_NEEDED = "Conv Mul Sigmoid Concat Add Sub Div Reshape Unsqueeze Split Shape Gather Cast Range Expand MaxPool"


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """(clamp(round(x / s) + zp) - zp) * s with a straight-through round (zero gradient where clamped)."""
    q = torch.clamp(_round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


_ONNX_TO_TORCH = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16}


class QdqMirror(torch.nn.Module):
    """`qdq`: the quantized graph; `fp32`: the float graph it was made from (float weights and biases by the Conv's
    node name). `fake_quant` switches between the int8 graph's arithmetic and the fp32 graph's."""

    def __init__(self, qdq: Any, fp32: Any, float_consts: dict[str, np.ndarray], weight_qmin: int = -127) -> None:
        super().__init__()
        self.graph = qdq.graph
        # quantized constants (the head's anchors and strides): float value by the quantized initializer's name
        self.float_consts = {k + "_quantized": torch.from_numpy(np.array(v)) for k, v in float_consts.items()}
        self.fake_quant = True
        self.weight_qmin = weight_qmin
        init = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
        self.consts: dict[str, torch.Tensor] = {k: torch.from_numpy(np.array(v)) for k, v in init.items()}
        fp_init = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
        fp_conv = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
        producer = {o: n for n in qdq.graph.node for o in n.output}
        self.weights = torch.nn.ParameterDict()
        # activation scales (log), learnable LSQ-style; keyed by the QuantizeLinear's position in the graph
        self.act_log_scales = torch.nn.ParameterDict(
            {
                f"q{i}": torch.nn.Parameter(torch.tensor(float(np.log(init[n.input[1]]))))
                for i, n in enumerate(qdq.graph.node)
                if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].size == 1
            }
        )
        self.act_index = {n.name: f"q{i}" for i, n in enumerate(qdq.graph.node) if n.op_type == "QuantizeLinear"}
        self.biases = torch.nn.ParameterDict()
        self.correction: dict[str, torch.Tensor] = {}  # int8 graph's bias minus fp32's: bias correction, kept fixed
        self.weight_dq: dict[str, tuple[str, int]] = {}  # DQ output -> (conv key, axis)
        self.bias_dq: dict[str, str] = {}
        self.fp32_names: dict[str, tuple[str, str | None, tuple[int, ...]]] = {}  # key -> fp32 W, b names, W shape
        for n in qdq.graph.node:
            if n.op_type != "Conv":
                continue
            if n.name not in fp_conv:
                raise KeyError(f"Conv {n.name} of the int8 graph has no Conv of that name in the fp32 graph")
            key = n.name.replace(".", "_").replace("/", "_")
            fconv = fp_conv[n.name]
            w = fp_init[fconv.input[1]]
            wdq = producer[n.input[1]]
            assert wdq.op_type == "DequantizeLinear" and wdq.input[0] in init, n.name
            shape = init[wdq.input[0]].shape
            if shape != w.shape:  # cpu_int8's input-channel padding (3 -> 4 channels): zero channels
                assert shape[1] > w.shape[1] and shape[0] == w.shape[0], (n.name, shape, w.shape)
                w = np.concatenate([w, np.zeros((w.shape[0], shape[1] - w.shape[1], *w.shape[2:]), w.dtype)], 1)
            self.weights[key] = torch.nn.Parameter(torch.from_numpy(w.copy()))
            self.weight_dq[n.input[1]] = (key, _attrs(wdq).get("axis", 1))
            b_name = fconv.input[2] if len(fconv.input) > 2 else None
            self.fp32_names[key] = (fconv.input[1], b_name, fp_init[fconv.input[1]].shape)
            if len(n.input) > 2 and b_name is not None:
                b = fp_init[b_name].astype(np.float32)
                bdq = producer.get(n.input[2])
                if bdq is not None and bdq.op_type == "DequantizeLinear":
                    qb = init[bdq.input[0]].astype(np.float64) * init[bdq.input[1]].astype(np.float64)
                    self.bias_dq[n.input[2]] = key
                else:
                    qb = init[n.input[2]]
                self.biases[key] = torch.nn.Parameter(torch.from_numpy(b.copy()))
                self.correction[key] = torch.from_numpy((qb - b).astype(np.float32))

    def weight(self, key: str, axis: int = 0) -> torch.Tensor:
        w = self.weights[key]
        if not self.fake_quant:
            return w
        dims = [d for d in range(w.dim()) if d != axis]
        scale = (w.detach().abs().amax(dim=dims, keepdim=True) / 127.0).clamp_min(1e-12)
        return fake_quant(w, scale, torch.zeros(()), self.weight_qmin, 127)

    def bias(self, key: str) -> torch.Tensor:
        b = self.biases[key]
        return b + self.correction[key] if self.fake_quant else b

    def forward(self, images: torch.Tensor, keep: set[str] | None = None) -> dict[str, torch.Tensor]:
        env: dict[str, Any] = {self.graph.input[0].name: images}
        for n in self.graph.node:
            if n.output[0] in self.weight_dq or n.output[0] in self.bias_dq:
                continue  # read from the Parameters by _value
            ins = [self._value(env, name) for name in n.input]
            outs = self._run(n, ins)
            for name, v in zip(n.output, outs):
                env[name] = v
        wanted = [o.name for o in self.graph.output] + sorted(keep or ())
        return {k: env[k] for k in wanted}

    def _value(self, env: dict[str, Any], name: str) -> Any:
        if name == "":
            return None
        if name in env:
            return env[name]
        if name in self.weight_dq:
            return self.weight(*self.weight_dq[name])
        if name in self.bias_dq:
            return self.bias(self.bias_dq[name])
        return self.consts[name]

    def _run(self, n: Any, x: list[Any]) -> list[Any]:
        a, op = _attrs(n), n.op_type
        if op == "QuantizeLinear":  # activation fake quantization; its DequantizeLinear is then the identity
            if not self.fake_quant:
                return [x[0]]
            qmin, qmax = (0, 255) if x[2].dtype == torch.uint8 else (-128, 127)
            key = self.act_index[n.name]
            scale = self.act_log_scales[key].exp() if key in self.act_log_scales else x[1].float()
            return [fake_quant(x[0], scale, x[2].float(), qmin, qmax)]
        if op == "DequantizeLinear":
            if x[0].dtype not in (torch.uint8, torch.int8, torch.int32):
                return [x[0]]
            if not self.fake_quant and n.input[0] in self.float_consts:
                return [self.float_consts[n.input[0]]]
            if n.input[0] in self.float_consts or not self.fake_quant:
                assert n.input[0] in self.float_consts, f"{n.name}: no float value for {n.input[0]}"
            return [(x[0].float() - x[2].float()) * x[1].float()]
        if op == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:], n.name
            return [
                F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, a.get("strides", 1), pads[:2],
                         a.get("dilations", 1), a.get("group", 1))
            ]  # fmt: skip
        if op == "Sigmoid":
            return [torch.sigmoid(x[0])]
        if op in ("Mul", "Add", "Sub", "Div"):
            f = {"Mul": torch.mul, "Add": torch.add, "Sub": torch.sub, "Div": torch.div}[op]
            if x[0].dtype == torch.int64 and x[1].dtype == torch.int64 and op == "Div":
                return [torch.div(x[0], x[1], rounding_mode="floor")]
            return [f(x[0], x[1])]
        if op == "Concat":
            return [torch.cat(x, a["axis"])]
        if op == "Split":
            return list(torch.split(x[0], x[1].tolist(), a.get("axis", 0)))
        if op == "Reshape":
            shape = [int(s) if s != 0 else x[0].shape[i] for i, s in enumerate(x[1].tolist())]
            return [x[0].reshape(shape)]
        if op == "Unsqueeze":
            out = x[0]
            for d in sorted(int(v) for v in x[1].tolist()):
                out = out.unsqueeze(d)
            return [out]
        if op == "Shape":
            return [torch.tensor(x[0].shape, dtype=torch.int64)]
        if op == "Gather":
            ax = a.get("axis", 0)
            idx = x[1].long() % x[0].shape[ax]
            picked = torch.index_select(x[0], ax, idx.reshape(-1))
            return [picked.reshape((*x[0].shape[:ax], *idx.shape, *x[0].shape[ax + 1 :]))]
        if op == "Cast":
            return [x[0].to(_ONNX_TO_TORCH[a["to"]])]
        if op == "Range":
            return [torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)]
        if op == "Expand":
            shape = torch.broadcast_shapes(tuple(x[0].shape), tuple(int(s) for s in x[1].tolist()))
            return [x[0].expand(shape)]
        if op == "ConstantOfShape":
            v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
            return [torch.full([int(s) for s in x[0].tolist()], v.item(), dtype=torch.from_numpy(v).dtype)]
        if op == "MaxPool":
            p = a.get("pads", [0, 0, 0, 0])
            return [
                F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), p[:2], ceil_mode=bool(a.get("ceil_mode")))
            ]
        if op == "Transpose":
            return [x[0].permute(*a["perm"])]
        if op == "Resize":
            assert a.get("mode", b"nearest") == b"nearest" and a.get("coordinate_transformation_mode") == b"asymmetric"
            scales = x[2].tolist()
            return [F.interpolate(x[0], scale_factor=scales[2:], mode="nearest")]
        if op == "Slice":
            out = x[0]
            axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(x[1])))
            steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(axes)
            for s, e, ax, st in zip(x[1].tolist(), x[2].tolist(), axes, steps):
                size = out.shape[ax]
                s, e = max(min(s, size), -size), max(min(e, size), -size - 1)
                idx = torch.arange(s % size if s < 0 else s, e + size if e < 0 else e, st)
                out = out.index_select(ax, idx)
            return [out]
        if op == "Softmax":
            return [torch.softmax(x[0], a.get("axis", -1))]
        if op == "Pad":
            pads = x[1].tolist()
            assert a.get("mode", b"constant") == b"constant", n.name
            half = len(pads) // 2
            torch_pads = []
            for d in reversed(range(half)):
                torch_pads += [pads[d], pads[d + half]]
            value = float(x[2].item()) if len(x) > 2 and x[2] is not None else 0.0
            return [F.pad(x[0], torch_pads, value=value)]
        if op == "Constant":
            return [torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))]
        raise NotImplementedError(f"{n.name}: op {op} has no torch mirror")

    @staticmethod
    def quantized_constants(qdq: Any) -> list[str]:
        """Names (in the float graph) of the constants the int8 graph stores quantized, other than Conv weights."""
        inits = {i.name for i in qdq.graph.initializer}
        consts = {n.input[1] for n in qdq.graph.node if n.op_type == "Conv"}
        return [
            n.input[0].removesuffix("_quantized")
            for n in qdq.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.output[0] not in consts
            and not n.input[0].endswith("bias_quantized")
        ]  # fmt: skip

    def activation_scales(self) -> dict[str, float]:
        """The (learned) activation scale of each QuantizeLinear, by node name."""
        return {
            name: float(self.act_log_scales[k].detach().exp())
            for name, k in self.act_index.items()
            if k in self.act_log_scales
        }

    def export_qdq(self, qdq: Any) -> Any:
        """A copy of the int8 graph with the mirror's arithmetic: learned activation scales (shared with their
        DequantizeLinear by initializer name), Conv weights re-quantized per channel from the tuned floats, biases
        (tuned + fixed correction) as int32 at input scale x weight scale, as onnxruntime's quantizer writes them."""
        import copy

        out = copy.deepcopy(qdq)
        init = {i.name: i for i in out.graph.initializer}
        producer = {o: n for n in out.graph.node for o in n.output}

        def put(name: str, value: np.ndarray) -> None:
            init[name].CopyFrom(numpy_helper.from_array(value, name))

        for n in out.graph.node:
            key = self.act_index.get(n.name)
            if n.op_type == "QuantizeLinear" and key in self.act_log_scales:
                put(n.input[1], np.array(float(self.act_log_scales[key].detach().exp()), np.float32))
        for n in out.graph.node:
            if n.op_type != "Conv" or n.input[1] not in self.weight_dq:
                continue
            key, axis = self.weight_dq[n.input[1]]
            w = self.weights[key].detach().numpy().astype(np.float64)
            s_w = np.maximum(np.abs(w).reshape(len(w), -1).max(1) / 127.0, 1e-12)
            wdq = producer[n.input[1]]
            q = np.clip(np.round(w / s_w.reshape(-1, 1, 1, 1)), self.weight_qmin, 127).astype(np.int8)
            put(wdq.input[0], q)
            put(wdq.input[1], s_w.astype(np.float32))
            if len(n.input) > 2 and n.input[2] in self.bias_dq:
                s_in = numpy_helper.to_array(init[producer[n.input[0]].input[1]]).astype(np.float64)
                b = (self.biases[key] + self.correction[key]).detach().numpy().astype(np.float64)
                bdq = producer[n.input[2]]
                s_b = (s_in * s_w).astype(np.float32)
                put(bdq.input[0], np.round(b / s_b.astype(np.float64)).astype(np.int32))
                put(bdq.input[1], s_b)
        return out

    def float_weights(self) -> dict[str, np.ndarray]:
        """The tuned float initializers by the fp32 graph's names (padding channels dropped)."""
        out = {}
        for key, (w_name, b_name, shape) in self.fp32_names.items():
            w = self.weights[key].detach().numpy()
            out[w_name] = np.ascontiguousarray(w[:, : shape[1]])
            if b_name is not None and key in self.biases:
                out[b_name] = self.biases[key].detach().numpy().copy()
        return out
