"""The compact int8 form of one LSTM/GRU direction (quantize.recurrent: scan): the input projection of every time
step hoisted out of the recurrence as one MatMul (X·Wᵀ + biases, quantized with the rest of the graph), and the
recurrence in an ONNX Scan whose body holds the recurrent MatMul H·Rᵀ on Q/DQ int8 inputs plus the float gate math.

The body's Q/DQ are written here, not by a quantizer: onnxruntime's quantize_static and TensorRT's placement
(tensorrt_qdq.py) work on the main graph only. With the default activations every H_t is o ⊙ tanh(c) (LSTM) or a
convex mix of tanh and H_{t-1} (GRU), so |H| ≤ 1 once |H_0| ≤ 1: the body is built with H on [-1, 1], both ends
exact, and passes/recurrent_calibration.py narrows each body's range to the largest |H| its layer reaches on the calibration
samples (an LSTM's o ⊙ tanh(c) often stays well inside; a saturating GRU keeps [-1, 1]); r ⊙ H of a GRU without
linear_before_reset shares it (|r ⊙ H| ≤ |H|). The weights R are int8 per output channel (symmetric, as
onnxruntime's quantizer makes them).
onnxruntime fuses each DQ → MatMul ← DQ of the body into MatMulIntegerToFloat (its graph transformers recurse
into Scan bodies), so a step costs one int8 GEMV plus the gate ops, not one node per step of the unrolled form.
A MatMul output is added with Sum, not Add: onnxruntime's MatMulAddFusion (level 1, before the QDQ fusions) turns a
2-D MatMul + Add into a float Gemm that dequantizes R at every step (resemblyzer int8: 252 ms against 8.5 ms fp32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployc.passes.onnx_util import NodeBuilder

INT8, UINT8 = 3, 2  # onnx.TensorProto element types
H_SCALE = "h_scale"  # the body initializer holding H's quantization step (with_state_ranges rewrites it)


class ScanBody(NodeBuilder):
    """Nodes and initializers of one Scan body, named under `base`."""

    def __init__(self, base: str, signed: bool, int8: bool = True):
        super().__init__(base)
        self.int8 = int8
        # H on [-1, 1] with both ends exact (a saturated unit sits there): int8 with zero point 0 (TensorRT's
        # symmetric scheme), or uint8 around 127 (255 unused; 2/255 around 128 rounds +1 to 0.996 on every step)
        self.h_scale = self.const(np.array(1 / 127, np.float32), H_SCALE)
        zero = np.array(0, np.int8) if signed else np.array(127, np.uint8)
        self.h_zero = self.const(zero, "h_zero")

    def int8_matmul(self, h: str, weight_t: np.ndarray, hint: str) -> str:
        """h · weight_t with h quantized on [-1, 1] and weight_t ([K, N]) int8 per output column (float when the
        body is built float: the rewrite's exactness is checked on that)."""
        if not self.int8:
            return self.op("MatMul", [h, self.const(weight_t, f"{hint}_w")], hint)[0]
        (q,) = self.op("QuantizeLinear", [h, self.h_scale, self.h_zero], f"{hint}_q")
        (hq,) = self.op("DequantizeLinear", [q, self.h_scale, self.h_zero], f"{hint}_dq")
        scale = np.maximum(np.abs(weight_t).max(axis=0), 1e-8).astype(np.float32) / 127
        w8 = np.clip(np.round(weight_t / scale), -127, 127).astype(np.int8)
        zeros = self.const(np.zeros(len(scale), np.int8), f"{hint}_w_zero")
        wq = [self.const(w8, f"{hint}_w_int8"), self.const(scale, f"{hint}_w_scale"), zeros]
        (w,) = self.op("DequantizeLinear", wq, f"{hint}_w_dq", axis=1)
        return self.op("MatMul", [hq, w], hint)[0]

    def graph(self, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]]) -> Any:
        """The body graph: inputs and outputs as (name, width), each [batch, width] float (outputs without a
        shape: inference derives it from the inputs, so a batch of 1 reaches the Scan's outputs)."""
        from onnx import TensorProto, helper

        def info(name: str, width: int | None) -> Any:
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, None if width is None else ["batch", width])

        return helper.make_graph(
            self.nodes,
            f"{self.base}/body",
            [info(n, w) for n, w in inputs],
            [info(n, None) for n, _ in outputs],
            self.inits,
        )


def lstm_body(body: ScanBody, r: np.ndarray, hidden: int) -> Any:
    """LSTM step (gates i, o, f, c): state (h, c), scanned x·Wᵀ + biases; outputs h, c and h again (scanned)."""
    h, c, x = f"{body.base}/h_prev", f"{body.base}/c_prev", f"{body.base}/xw_t"
    (g,) = body.op("Sum", [x, body.int8_matmul(h, r.T.astype(np.float32), "hR")], "gates")
    split = body.const(np.full(4, hidden, np.int64), "iofc")
    i, o, f, cc = body.op("Split", [g, split], "iofc", outputs=4, axis=-1)
    (i,), (o,), (f,) = body.op("Sigmoid", [i], "i"), body.op("Sigmoid", [o], "o"), body.op("Sigmoid", [f], "f")
    (cc,) = body.op("Tanh", [cc], "c_cand")
    (c_t,) = body.op("Add", [body.op("Mul", [f, c], "fc")[0], body.op("Mul", [i, cc], "ic")[0]], "c_t")
    (h_t,) = body.op("Mul", [o, body.op("Tanh", [c_t], "tanh_c")[0]], "h_t")
    (y,) = body.op("Identity", [h_t], "y_t")
    return body.graph([(h, hidden), (c, hidden), (x, 4 * hidden)], [(h_t, hidden), (c_t, hidden), (y, hidden)])


def gru_body(body: ScanBody, r: np.ndarray, rb_h: np.ndarray, hidden: int, lbr: bool) -> Any:
    """GRU step (gates z, r, h): state h, scanned x·Wᵀ + every bias but a reset one; outputs h and h (scanned)."""
    h, x = f"{body.base}/h_prev", f"{body.base}/xw_t"
    cut = body.const(np.array([2 * hidden, hidden], np.int64), "zr_h")
    x_zr, x_h = body.op("Split", [x, cut], "x_zr_h", outputs=2, axis=-1)
    if lbr:  # one MatMul for the three gates; h's recurrent bias stays inside the reset product
        hr = body.int8_matmul(h, r.T.astype(np.float32), "hR")
        hr_zr, hr_h = body.op("Split", [hr, cut], "hR_zr_h", outputs=2, axis=-1)
        (hr_h,) = body.op("Add", [hr_h, body.const(rb_h.astype(np.float32), "Rbh")], "hR_bias")
    else:
        hr_zr = body.int8_matmul(h, r[: 2 * hidden].T.astype(np.float32), "hRzr")
    (zr,) = body.op("Sigmoid", [body.op("Sum", [x_zr, hr_zr], "zr")[0]], "zr_sig")
    z, rr = body.op("Split", [zr, body.const(np.full(2, hidden, np.int64), "z_r")], "z_r", outputs=2, axis=-1)
    if lbr:
        (cand,) = body.op("Add", [x_h, body.op("Mul", [rr, hr_h], "r_hR")[0]], "h_in")
    else:  # (r ⊙ H)·Rhᵀ: |r ⊙ H| ≤ |H| ≤ 1, the same fixed range
        (rh,) = body.op("Mul", [rr, h], "r_h")
        (cand,) = body.op("Sum", [x_h, body.int8_matmul(rh, r[2 * hidden :].T.astype(np.float32), "rhR")], "h_in")
    (cand,) = body.op("Tanh", [cand], "h_cand")
    (h_t,) = body.op("Add", [cand, body.op("Mul", [z, body.op("Sub", [h, cand], "h_diff")[0]], "z_diff")[0]], "h_t")
    (y,) = body.op("Identity", [h_t], "y_t")
    return body.graph([(h, hidden), (x, 3 * hidden)], [(h_t, hidden), (y, hidden)])


def with_state_ranges(proto: Any, ranges: dict[str, float]) -> Any:
    """`proto` with the H quantizer of each named Scan body on [-m, m] (passes/recurrent_calibration.py measures m)."""
    from onnx import numpy_helper

    from deployc.passes.onnx_util import copied

    out = copied(proto)
    for node in (n for n in out.graph.node if n.name in ranges):
        init = h_scale(node)
        init.CopyFrom(numpy_helper.from_array(np.array(ranges[node.name] / 127, np.float32), init.name))
    return out


def h_scale(scan: Any) -> Any | None:
    """The H step initializer of an int8 Scan body built here (None: another Scan)."""
    body = next((a.g for a in scan.attribute if a.name == "body"), None)
    found = [i for i in body.initializer if i.name.endswith(f"/{H_SCALE}")] if body is not None else []
    return found[0] if found else None
