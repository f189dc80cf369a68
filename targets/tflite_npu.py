"""Where the ops of a .tflite can run: the integer-only quick check (no float tensor, what NPUs and delegates
need first) and, with Vela installed and accelerators named, Vela's placement on each (targets/vela.py)."""

from __future__ import annotations

import collections
from typing import Any

from deployc.targets.vela import QUICK_CHECK, npu_reports, vela_missing
from deployc.validation.gates import more_on_cpu

MAX_LISTED = 64  # float ops listed by name in details.npu.float_ops; all are counted in float_op_count/_types
_INT_TYPES = {"INT8", "UINT8", "INT16", "INT32", "INT64", "INT4", "BOOL"}


def op_report(model: bytes) -> tuple[dict[str, int], list[dict[str, Any]], list[str]]:
    """Op counts, the ops that touch a float tensor (float islands), and the float graph-edge conversions."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(model))
    counts: collections.Counter[str] = collections.Counter()
    islands, edges = [], []
    for sg in m.subgraphs:
        graph_io = set(sg.inputs) | set(sg.outputs)
        for i, op in enumerate(sg.operators):
            name = fb.opcode_to_name(m, op.opcodeIndex) or f"opcode_{op.opcodeIndex}"
            counts[name] += 1
            tensors = [t for t in list(op.inputs) + list(op.outputs) if t >= 0]
            floats = [t for t in tensors if fb.type_to_name(sg.tensors[t].type) not in _INT_TYPES]
            if not floats:
                continue
            if name in ("QUANTIZE", "DEQUANTIZE") and all(t in graph_io for t in floats):
                edges.append(f"{name}#{i}")
                continue
            islands.append({"op": name, "index": i, "float_tensors": [_tensor_name(sg.tensors[t]) for t in floats]})
    return dict(sorted(counts.items())), islands, edges


def _tensor_name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def npu_profile(model: bytes, accelerators: list[str] | None = None) -> dict[str, Any]:
    """Is every op integer-only (NPUs and delegates reject float islands)? And, with `accelerators` and Vela
    installed, where Vela places each op on each of them (targets/vela.py)."""
    _, islands, edges = op_report(model)
    profile: dict[str, Any] = {
        "integer_only": not islands,
        "float_op_count": len(islands),
        "float_op_types": dict(sorted(collections.Counter(o["op"] for o in islands).items())),
        "float_ops": islands[:MAX_LISTED],  # the first ones: an LSTM unrolled to 7 000 float ops made a 2 MB manifest
        "float_io_conversions": edges,
    }
    missing = vela_missing() if accelerators else "no accelerator named in targets.tflite.npu"
    if missing:
        profile["check"] = f"{QUICK_CHECK}; {missing}"
    else:
        profile["check"] = "vela"
        profile["accelerators"] = npu_reports(model, accelerators)
    return profile


def npu_summary(report: dict[str, Any]) -> str:
    """'59/59 ops on the NPU, 0.184 ms, SRAM 6.6 KiB, flash 72.0 KiB' or the CPU ops with Vela's reasons."""
    if "error" in report:
        return f"Vela could not compile it: {report['error']}"
    total = report["npu_ops"] + report["cpu_ops"]
    text = f"{report['npu_ops']}/{total} ops on the NPU"
    if report.get("inference_ms") is not None:
        text += f", {report['inference_ms']:.3f} ms"
    if report.get("sram_kib") is not None:
        text += f", SRAM {report['sram_kib']:.1f} KiB, flash {report.get('flash_kib') or 0:.1f} KiB"
    if report["cpu_fallback"]:
        text += "; on the CPU: " + "; ".join(f"{c['op']} ({c['reason']})" for c in report["cpu_fallback"])
        text += more_on_cpu(report)
    return text
