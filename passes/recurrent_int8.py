"""LSTM and GRU nodes rewritten into MatMuls and elementwise ops so their gate MatMuls can run in int8 (onnx and
tensorrt int8): onnxruntime's static quantizer and TensorRT's Q/DQ placement leave an LSTM/GRU node float whole,
and onnxruntime's dynamic quantizer has no GRU. Two forms (quantize.recurrent):

- 'scan' (default): per direction, one MatMul projects every time step's input at once (X·Wᵀ + Wb + Rb), quantized
  with the rest of the graph, and an ONNX Scan runs the recurrence; its body holds the int8 recurrent MatMul and
  the gate math (passes/recurrent_scan.py). Any sequence length; a node of one step is unrolled instead.
- 'unroll': the same projection, then one set of nodes per time step of a fixed length: each step adds H_{t-1}·Rᵀ
  and applies the gates. Each recurrent MatMul reads H through its own Identity: a quantizer that puts Q/DQ on H
  for the MatMul (onnxruntime rewires every reader of a quantized tensor) then leaves the recurrence itself float.
  One node per step: onnxruntime runs resemblyzer's 160 steps ~20-40x slower than its LSTM kernel.

Gates as the ONNX operator defines them (LSTM i, o, f, c; GRU z, r, h with or without linear_before_reset). The
elementwise gate math stays float (listed in `Unrolled.elementwise`): quantizing every step's sigmoids and products
compounds rounding over time, and it holds a negligible share of the MACs. Written by hand: onnxscript's rewriter
and onnxruntime have no LSTM/GRU decomposition.

passes/recurrent_calibration.py then measures the rewrite on calibration samples: each Scan body's H range, and
the hoisted projections whose input int8 cannot hold (kept float).

Not rewritten (left as they are, with the reason): sequence_lens, peepholes, clip, custom activations,
input_forget, layout 1, a graph below opset 13, and for 'unroll' a sequence length not fixed in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployc.passes.onnx_util import NodeBuilder, copied

RECURRENT_OPS = ("LSTM", "GRU")
MIN_OPSET = 13  # Split/Squeeze/Unsqueeze with their sizes and axes as inputs
DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


@dataclass(frozen=True)
class Unrolled:
    proto: Any
    rewritten: tuple[str, ...] = ()  # recurrent nodes unrolled
    kept: dict[str, str] = field(default_factory=dict)  # recurrent node left as it is -> why
    matmuls: tuple[str, ...] = ()  # the gate MatMuls (to run in int8)
    elementwise: tuple[str, ...] = ()  # the gate math and the Scans (to stay float in the main graph)
    body_matmuls: tuple[str, ...] = ()  # 'Scan:MatMul' of the Scan bodies, int8 through their own Q/DQ
    projections: tuple[str, ...] = ()  # the hoisted input projections (MatMul X·Wᵀ of every step at once)
    state_ranges: dict[str, float] = field(default_factory=dict)  # Scan -> max |H| its body quantizes H on
    float_projections: dict[str, str] = field(default_factory=dict)  # projection kept float -> why

    def to_json(self) -> dict[str, Any]:
        found = {"unrolled": list(self.rewritten), "kept": dict(self.kept), "gate_matmuls": len(self.matmuls)}
        if self.state_ranges:
            found["scan_state_ranges"] = dict(self.state_ranges)
        if self.float_projections:
            found["float_projections"] = dict(self.float_projections)
        return found | ({"scan_body_matmuls": len(self.body_matmuls)} if self.body_matmuls else {})


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _seq_lengths(proto: Any) -> dict[str, int]:
    """Static length of the first axis of every tensor read as an LSTM/GRU input X."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True).graph
    except Exception:  # inference refuses some graphs: lengths stay unknown, nodes stay float
        return {}
    found = {}
    for v in [*inferred.value_info, *inferred.input]:
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].dim_value > 0:
            found[v.name] = dims[0].dim_value
    return found


def _why_not(node: Any, seq: int | None, opset: int, inits: dict[str, Any]) -> str | None:
    if opset < MIN_OPSET:
        return f"opset {opset} (the rewrite needs {MIN_OPSET})"
    if seq is None:
        return "its sequence length is not fixed in the graph (LSTM/GRU int8 unrolls a fixed number of steps)"
    if len(node.input) > 4 and node.input[4]:
        return "it reads sequence_lens"
    if node.op_type == "LSTM" and len(node.input) > 7 and node.input[7]:
        return "it has peepholes"
    if _attr(node, "clip", None) is not None or _attr(node, "input_forget", 0):
        return "it uses clip or input_forget"
    if _attr(node, "layout", 0):
        return "layout 1 (batch first)"
    acts = [a.decode() if isinstance(a, bytes) else a for a in _attr(node, "activations", [])]
    if acts and acts[: len(DEFAULTS[node.op_type])] != DEFAULTS[node.op_type]:
        return f"custom activations {acts}"
    if any(i and i not in inits for i in node.input[1:4]):
        return "its weights are not constants"
    return None


class _Builder(NodeBuilder):
    """Nodes and initializers of one rewrite, named under the recurrent node's name."""

    def __init__(self, base: str):
        super().__init__(base)
        self.body_matmuls: list[str] = []  # 'scan node:body MatMul' (int8 through the body's own Q/DQ)
        self.projections: list[str] = []  # the hoisted input projections


def _direction(b: _Builder, node: Any, d: int, reverse: bool, x: str, seq: int, tensors: dict) -> tuple:
    """One direction: the list of h_t in time order, and the last h and c."""
    hidden = int(_attr(node, "hidden_size", tensors["R"].shape[-1]))
    gates = 4 if node.op_type == "LSTM" else 3
    w, r = tensors["W"][d], tensors["R"][d]  # [gates*H, input], [gates*H, H]
    bias = tensors["B"][d] if tensors["B"] is not None else np.zeros(2 * gates * hidden, np.float32)
    wb, rb = bias[: gates * hidden], bias[gates * hidden :]
    lbr = node.op_type == "GRU" and _attr(node, "linear_before_reset", 0)
    # input projection of every step at once; GRU's recurrent bias of the h gate stays apart when it is reset
    in_bias = wb + rb if not lbr else np.concatenate([wb[: 2 * hidden] + rb[: 2 * hidden], wb[2 * hidden :]])
    (xw,) = b.op("MatMul", [x, b.const(w.T.astype(np.float32), f"d{d}_W_t")], f"d{d}_x_proj")
    b.projections.append(b.nodes[-1].name)
    (xw,) = b.op("Add", [xw, b.const(in_bias.astype(np.float32), f"d{d}_bias")], f"d{d}_x_bias")
    ones = b.const(np.ones(seq, np.int64), f"d{d}_split")
    steps = b.op("Split", [xw, ones], f"d{d}_steps", outputs=seq, axis=0)
    zero_axis = b.const(np.array([0], np.int64), f"d{d}_axis0")
    h, c = tensors["h0"], tensors["c0"]
    if h is not None:
        (h,) = b.op("Gather", [h, b.const(np.array(d, np.int64), f"d{d}_index")], f"d{d}_h0", axis=0)
    if c is not None:
        (c,) = b.op("Gather", [c, b.const(np.array(d, np.int64), f"d{d}_cindex")], f"d{d}_c0", axis=0)
    r_t = b.const(r.T.astype(np.float32), f"d{d}_R_t")
    cut = b.const(np.array([2 * hidden, hidden], np.int64), f"d{d}_zr_h")
    quarters = b.const(np.full(4, hidden, np.int64), f"d{d}_iofc")
    if node.op_type == "GRU":
        halves = b.const(np.full(2, hidden, np.int64), f"d{d}_z_r")
        rb_h = b.const(rb[2 * hidden :].astype(np.float32), f"d{d}_Rbh")
        r_zr = b.const(r[: 2 * hidden].T.astype(np.float32), f"d{d}_Rzr_t")
        r_h = b.const(r[2 * hidden :].T.astype(np.float32), f"d{d}_Rh_t")
    outs = []
    for t in reversed(range(seq)) if reverse else range(seq):
        (xt,) = b.op("Squeeze", [steps[t], zero_axis], f"d{d}_t{t}_x")
        if node.op_type == "LSTM":
            g = xt
            if h is not None:
                (hr,) = b.op("MatMul", [b.op("Identity", [h], "h_mm")[0], r_t], f"d{d}_t{t}_hR")
                (g,) = b.op("Add", [xt, hr], f"d{d}_t{t}_gates")
            i, o, f, cc = b.op("Split", [g, quarters], f"d{d}_t{t}_iofc", outputs=4, axis=-1)
            (i,), (o,), (cc,) = b.op("Sigmoid", [i], "i"), b.op("Sigmoid", [o], "o"), b.op("Tanh", [cc], "c")
            (ic,) = b.op("Mul", [i, cc], "ic")
            if c is not None:
                (f,) = b.op("Sigmoid", [f], "f")
                (fc,) = b.op("Mul", [f, c], "fc")
                (ic,) = b.op("Add", [fc, ic], "c_t")
            c = ic
            (tc,) = b.op("Tanh", [c], "tanh_c")
            (h,) = b.op("Mul", [o, tc], "h_t")
        else:
            x_zr, x_h = b.op("Split", [xt, cut], f"d{d}_t{t}_zr_h", outputs=2, axis=-1)
            zr = x_zr
            if h is not None:
                (hr,) = b.op("MatMul", [b.op("Identity", [h], "h_mm")[0], r_t if lbr else r_zr], f"d{d}_t{t}_hR")
                hr_zr = hr
                if lbr:
                    hr_zr, hr_h = b.op("Split", [hr, cut], f"d{d}_t{t}_hR_split", outputs=2, axis=-1)
                    (hr_h,) = b.op("Add", [hr_h, rb_h], "hR_bias")
                (zr,) = b.op("Add", [x_zr, hr_zr], "zr")
            (zr,) = b.op("Sigmoid", [zr], "zr_sig")
            z, rr = b.op("Split", [zr, halves], "z_r", outputs=2, axis=-1)
            cand = x_h  # x·Wᵀ with every bias but a reset one already added
            if lbr:  # r ⊙ (H·Rhᵀ + Rbh); H_{-1} = 0 leaves r ⊙ Rbh
                (reset,) = b.op("Mul", [rr, hr_h if h is not None else rb_h], "r_hR")
                (cand,) = b.op("Add", [x_h, reset], "h_in")
            elif h is not None:  # (r ⊙ H)·Rhᵀ
                (rh,) = b.op("Mul", [rr, h], "r_h")
                (hh,) = b.op("MatMul", [b.op("Identity", [rh], "rh_mm")[0], r_h], f"d{d}_t{t}_rhR")
                (cand,) = b.op("Add", [x_h, hh], "h_in")
            (cand,) = b.op("Tanh", [cand], "h_cand")
            if h is None:  # H_{-1} = 0: H_t = (1 - z) * candidate
                (one_minus,) = b.op("Sub", [b.const(np.ones(1, np.float32), f"d{d}_one"), z], "1_z")
                (h,) = b.op("Mul", [one_minus, cand], "h_t")
            else:  # (1 - z) * cand + z * h = cand + z * (h - cand)
                (diff,) = b.op("Sub", [h, cand], "h_diff")
                (zd,) = b.op("Mul", [z, diff], "z_diff")
                (h,) = b.op("Add", [cand, zd], "h_t")
        outs.append(h)
    return (outs[::-1] if reverse else outs), h, c


def _scan_direction(
    b: _Builder, node: Any, d: int, reverse: bool, x: str, tensors: dict, signed: bool, int8: bool
) -> tuple:
    """One direction as a hoisted input projection and a Scan (passes/recurrent_scan.py): Y [seq, batch, hidden]
    in time order, and the last h and c."""
    from onnx import helper

    hidden = int(_attr(node, "hidden_size", tensors["R"].shape[-1]))
    lstm = node.op_type == "LSTM"
    gates = 4 if lstm else 3
    w, r = tensors["W"][d], tensors["R"][d]
    bias = tensors["B"][d] if tensors["B"] is not None else np.zeros(2 * gates * hidden, np.float32)
    wb, rb = bias[: gates * hidden], bias[gates * hidden :]
    lbr = not lstm and bool(_attr(node, "linear_before_reset", 0))
    in_bias = wb + rb if not lbr else np.concatenate([wb[: 2 * hidden] + rb[: 2 * hidden], wb[2 * hidden :]])
    (xw,) = b.op("MatMul", [x, b.const(w.T.astype(np.float32), f"d{d}_W_t")], f"d{d}_x_proj")
    b.projections.append(b.nodes[-1].name)
    (xw,) = b.op("Add", [xw, b.const(in_bias.astype(np.float32), f"d{d}_bias")], f"d{d}_x_bias")
    batch = b.op(
        "Gather",
        [b.op("Shape", [x], f"d{d}_x_shape")[0], b.const(np.array([1], np.int64), f"d{d}_i1")],
        f"d{d}_batch",
        axis=0,
    )[0]
    (state_shape,) = b.op("Concat", [batch, b.const(np.array([hidden], np.int64), f"d{d}_hidden")], f"d{d}_hc", axis=0)
    states = []
    for key in ("h0", "c0") if lstm else ("h0",):
        if tensors[key] is not None:
            index = b.const(np.array(d, np.int64), f"d{d}_{key}_index")
            states.append(b.op("Gather", [tensors[key], index], f"d{d}_{key}", axis=0)[0])
        else:
            states.append(b.op("ConstantOfShape", [state_shape], f"d{d}_{key}_zero")[0])
    from deployc.passes.recurrent_scan import ScanBody, gru_body, lstm_body

    body_b = ScanBody(f"{b.base}/d{d}_scan", signed, int8)
    body = lstm_body(body_b, r, hidden) if lstm else gru_body(body_b, r, rb[2 * hidden :], hidden, lbr)
    name = f"{b.base}/d{d}_scan"
    outs = [f"{name}_h", f"{name}_c", f"{name}_Y"] if lstm else [f"{name}_h", f"{name}_Y"]
    flip = [int(reverse)]
    b.nodes.append(
        helper.make_node(
            "Scan",
            [*states, xw],
            outs,
            name=name,
            body=body,
            num_scan_inputs=1,
            scan_input_directions=flip,
            scan_output_directions=flip,
        )
    )
    b.elementwise.append(name)
    b.body_matmuls += [f"{name}:{m}" for m in body_b.matmuls]
    return outs[-1], outs[0], (outs[1] if lstm else None)


def _rewrite(
    node: Any, seq: int, inits: dict[str, Any], b: _Builder, scan: tuple[bool, bool] | None = None
) -> list[Any]:
    """Nodes writing the recurrent node's outputs (Y, Y_h, Y_c) from the unrolled directions, or from Scans when
    `scan` is given: (signed int8 in the bodies, bodies int8 at all)."""
    from onnx import helper, numpy_helper

    def tensor(i: int) -> np.ndarray | None:
        return numpy_helper.to_array(inits[node.input[i]]) if len(node.input) > i and node.input[i] else None

    tensors = {"W": tensor(1), "R": tensor(2), "B": tensor(3)}
    tensors["h0"] = node.input[5] if len(node.input) > 5 and node.input[5] else None
    tensors["c0"] = node.input[6] if node.op_type == "LSTM" and len(node.input) > 6 and node.input[6] else None
    direction = _attr(node, "direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    dirs = [False, True] if direction == "bidirectional" else [direction == "reverse"]
    axis0, axis1 = b.const(np.array([0], np.int64), "axis0"), b.const(np.array([1], np.int64), "axis1")
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        if scan is not None:
            y, h, c = _scan_direction(b, node, d, reverse, node.input[0], tensors, *scan)
        else:
            steps, h, c = _direction(b, node, d, reverse, node.input[0], seq, tensors)
            stacked = [b.op("Unsqueeze", [s, axis0], f"d{d}_y")[0] for s in steps]
            (y,) = b.op("Concat", stacked, f"d{d}_Y", axis=0)
        ys.append(b.op("Unsqueeze", [y, axis1], f"d{d}_Y_dir")[0])
        hs.append(b.op("Unsqueeze", [h, axis0], f"d{d}_Yh")[0])
        if c is not None:
            cs.append(b.op("Unsqueeze", [c, axis0], f"d{d}_Yc")[0])
    finals = []
    for k, (parts, axis) in enumerate(((ys, 1), (hs, 0), (cs, 0))):
        if len(node.output) > k and node.output[k] and parts:
            name = f"{b.base}/out{k}"
            finals.append(helper.make_node("Concat", parts, [node.output[k]], name=name, axis=axis))
            b.elementwise.append(name)
    return finals


def _deduplicated(inits: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """`inits` with equal tensors kept once, and each dropped name → the kept one: a decoder that calls one GRU
    once per output step (g2p: 20 nodes of one step, same weights) would otherwise get 20 copies of its weights."""
    import hashlib

    first: dict[tuple, str] = {}
    kept, renamed = [], {}
    for init in inits:
        # from_array writes raw_data; a tensor without it is kept as it is (keyed by its own name)
        digest = hashlib.sha256(init.raw_data).hexdigest() if init.raw_data else init.name
        key = (init.data_type, tuple(init.dims), digest)
        if key in first:
            renamed[init.name] = first[key]
        else:
            first[key] = init.name
            kept.append(init)
    return kept, renamed


def unroll_recurrent(proto: Any, mode: str = "scan", signed: bool = False, int8_body: bool = True) -> Unrolled:
    """`proto` with every LSTM/GRU of its main graph that can be rewritten rewritten (see the module docstring):
    mode 'scan' into a hoisted input projection + a Scan with int8 recurrent MatMuls (a node of one step is
    unrolled: a Scan of one step only adds its overhead), 'unroll' into one set of nodes per time step;
    'float' (quantize.recurrent) keeps every one whole and says so. `signed`: the Scan bodies' activations are
    int8 around 0 (TensorRT) rather than uint8; `int8_body` False builds them float (to check the rewrite)."""
    from deployc.passes.opset import onnx_opset

    nodes = [n for n in proto.graph.node if n.op_type in RECURRENT_OPS]
    if not nodes:
        return Unrolled(proto)
    if mode == "float":
        why = "quantize.recurrent: float (kept whole, its onnxruntime/TensorRT float kernel)"
        return Unrolled(proto, (), {n.name or f"{n.op_type}_{k}": why for k, n in enumerate(nodes)})
    inits = {i.name: i for i in proto.graph.initializer}
    lengths, opset = _seq_lengths(proto), onnx_opset(proto)
    out = copied(proto)
    kept, rewritten, matmuls, elementwise, body_matmuls, projections = {}, [], [], [], [], []
    replacement: dict[str, list[Any]] = {}
    new_inits: list[Any] = []
    for k, node in enumerate(nodes):
        name = node.name or f"{node.op_type}_{k}"
        seq = lengths.get(node.input[0])
        why = _why_not(node, seq if seq or mode == "unroll" else 0, opset, inits)
        if why:
            kept[name] = why
            continue
        scan = mode == "scan" and seq != 1
        b = _Builder(f"{name}/{'scan' if scan else 'unrolled'}")
        finals = _rewrite(node, seq or 0, inits, b, (signed, int8_body) if scan else None)
        replacement[node.name or node.output[0]] = b.nodes + finals
        new_inits += b.inits
        rewritten.append(name)
        matmuls += b.matmuls
        elementwise += b.elementwise
        body_matmuls += b.body_matmuls
        projections += b.projections
    if not rewritten:
        return Unrolled(proto, (), kept)
    new_inits, renamed = _deduplicated(new_inits)
    rebuilt = []
    for n in out.graph.node:
        key = n.name or n.output[0]
        rebuilt += replacement.get(key, [n]) if n.op_type in RECURRENT_OPS else [n]
    for n in rebuilt:
        n.input[:] = [renamed.get(i, i) for i in n.input]
    del out.graph.node[:]
    out.graph.node.extend(rebuilt)
    out.graph.initializer.extend(new_inits)
    used = {i for n in out.graph.node for i in n.input}
    kept_inits = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept_inits)
    return Unrolled(
        out, tuple(rewritten), kept, tuple(matmuls), tuple(elementwise), tuple(body_matmuls), tuple(projections)
    )
