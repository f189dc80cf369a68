"""zoo.md / zoo.json: one row per model × target × precision from each build's manifest.json and timings.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTED_ONNX = {"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN", "Attention"}
INT8_ONNX = {
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "QLinearConv",
    "QLinearMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
}
WEIGHTED_TFLITE = {
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "BATCH_MATMUL",
    "TRANSPOSE_CONV",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "CONV_3D",
    "EMBEDDING_LOOKUP",
}


def onnx_int8_coverage(path: Path) -> tuple[int, int]:
    """(int8 weighted ops, weighted ops): a weighted op counts as int8 when it is an integer kernel or its
    weight (input 1) comes out of a DequantizeLinear of an int8/uint8 initializer."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name: i.data_type for i in g.initializer}
    dq_int8 = {
        n.output[0]
        for n in g.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    }
    int8 = total = 0
    for n in g.node:
        if n.op_type in INT8_ONNX:
            int8, total = int8 + 1, total + 1
        elif n.op_type in WEIGHTED_ONNX:
            total += 1
            int8 += len(n.input) > 1 and n.input[1] in dq_int8
    return int8, total


def tflite_int8_coverage(path: Path) -> tuple[int, int]:
    """(int8 weighted ops, weighted ops) of a .tflite: a weighted op counts when its weight tensor is int8."""
    from ai_edge_litert.tools import flatbuffer_utils as fb

    m = fb.convert_bytearray_to_object(bytearray(path.read_bytes()))
    int8 = total = 0
    for sg in m.subgraphs:
        for op in sg.operators:
            if (fb.opcode_to_name(m, op.opcodeIndex) or "") in WEIGHTED_TFLITE:
                total += 1
                weight = op.inputs[1] if len(op.inputs) > 1 else -1
                int8 += weight >= 0 and fb.type_to_name(sg.tensors[weight].type) in ("INT8", "INT4")
    return int8, total


def int8_coverage(art: dict[str, Any], root: Path) -> str:
    """deployc's own figure when the manifest has one, else the zoo's count of int8 weighted ops."""
    details = art.get("details") or {}
    own = details.get("int8_coverage")
    if own is not None:
        return f"{own:.0%}" if isinstance(own, float) else str(own)
    if art.get("precision") not in ("int8", "dynamic") or not art.get("path"):
        return "—"
    path = Path(art["path"]) if Path(art["path"]).is_absolute() else root / art["path"]
    try:
        done, total = tflite_int8_coverage(path) if path.suffix == ".tflite" else onnx_int8_coverage(path)
    except Exception as exc:  # a coverage we cannot count is reported, never fatal to the table
        return f"? ({type(exc).__name__})"
    return f"{done}/{total}" if total else "0/0"


def rows_for(name: str, run: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Rows of one model: one per artifact when the build wrote a manifest, else one row with the exit code."""
    build = out / name / "build"
    manifest_path = build / "manifest.json"
    if not manifest_path.is_file():
        return [
            {
                "model": name,
                "target": "—",
                "precision": "—",
                "gate": f"exit {run.get('exit_code')}",
                "reason": run.get("error", ""),
                "metric": None,
                "metric_ref": None,
                "drift": None,
                "bytes": None,
                "latency_ratio": None,
                "latency_ms": None,
                "int8_coverage": "—",
            }
        ]
    manifest = json.loads(manifest_path.read_text())
    timings = json.loads((build / "timings.json").read_text()) if (build / "timings.json").is_file() else {}
    latency = {k: (v or {}).get("latency_ms_batch1") for k, v in timings.get("artifacts", {}).items()}
    rows = []
    for art in manifest["artifacts"]:
        label = f"{art['target']}/{art['precision']}"
        metrics, gate = art.get("metrics") or {}, art.get("gate") or {}
        ms, fp32_ms = latency.get(label), latency.get(f"{art['target']}/fp32")
        rows.append(
            {
                "model": name,
                "target": art["target"],
                "precision": art["precision"],
                "gate": gate.get("status", "?"),
                "reason": gate.get("reason", ""),
                "metric": metrics.get("metric"),
                "metric_ref": metrics.get("metric_ref"),
                "drift": metrics.get("drift"),
                "bytes": art.get("bytes"),
                "latency_ms": ms,
                "latency_ratio": ms / fp32_ms if ms and fp32_ms else None,
                "int8_coverage": int8_coverage(art, build),
            }
        )
    return rows


def _num(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} KB"


def render(models: list[dict[str, Any]], rows: list[dict[str, Any]], commands: list[str]) -> str:
    lines = (
        ["# deployc model zoo", "", "Command(s), in order:", ""]
        + [f"    {c}" for c in commands]
        + [
            "",
            "## Models",
            "",
            "| model | wheel | source | architecture | metric | data | exit | wall s | error |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    )
    for m in models:
        error = (m.get("error") or "") if m.get("exit_code") not in (0, 3) else ""  # 3: built, a gate failed
        lines.append(
            f"| {m['name']} | {m['requirement']} | {m['source']} | {m['architecture']} | {m['metric']} | "
            f"{m['data_note']} | {m.get('exit_code', '—')} | {_num(m.get('seconds'), '.0f')} | "
            f"{error.replace('|', '/')[:160]} |"
        )
    lines += [
        "",
        "## Artifacts",
        "",
        "Latency ratio: batch-1 latency / the same target's fp32 (timings.json). int8 coverage: weighted ops "
        "with int8 weights / weighted ops (counted by the zoo; deployc reports none).",
        "",
        "| model | target | precision | gate | metric (ref) | drift | size | latency ms | ratio to fp32 | int8 coverage |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gate = r["gate"] if r["gate"] != "fail" else f"**fail** ({r['reason']})"
        if r["gate"].startswith("exit"):
            gate = f"**{r['gate']}**"
        if r["gate"] == "skipped":
            gate = f"skipped ({r['reason'][:60]})"
        metric = "—" if r["metric"] is None else f"{r['metric']:.4f} ({r['metric_ref']:.4f})"
        lines.append(
            f"| {r['model']} | {r['target']} | {r['precision']} | {gate} | {metric} | "
            f"{_num(r['drift'], '+.4f')} | {_size(r['bytes'])} | {_num(r['latency_ms'], '.3f')} | "
            f"{_num(r['latency_ratio'], '.2f')} | {r['int8_coverage']} |"
        )
    return "\n".join(lines) + "\n"
