"""The NPU check with Arm's Ethos-U compiler, Vela (`pip install deployc[npu]`, i.e. ethos-u-vela): per accelerator,
the ops Vela places on the NPU and those it leaves to the CPU with its reason for each, and its estimates of
inference time, SRAM, flash and DRAM use. Vela runs in a child process (its C++ backend may abort) on the int8
flatbuffer; its estimates use its own default system configuration and memory mode for each accelerator, which
the report names (a real SoC has its own vela.ini)."""

from __future__ import annotations

import collections
import csv
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

Accelerator = Literal[
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
]
TIMEOUT_S = 900
MAX_LISTED = 32  # CPU ops listed with Vela's reason (an unrolled LSTM leaves 7 000 on the CPU)
QUICK_CHECK = "quick check only (every tensor integer; says nothing of which ops an NPU runs)"

_WARNING = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")
_PLACED = re.compile(r"^\s+(CPU|NPU): (\S+) = (.*) \(outputs \[[^\]]*\]\)$")
_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)")
_SETTING = re.compile(r"^(System configuration|Memory mode)\s+(\S+)$")


def vela_missing() -> str | None:
    """None when Vela can run here, else why not."""
    if importlib.util.find_spec("ethosu") is None or importlib.util.find_spec("ethosu.vela") is None:
        return "Vela is not installed (pip install 'deployc[npu]', i.e. ethos-u-vela)"
    return None


def vela_version() -> str:
    return importlib.metadata.version("ethos-u-vela")


def compile_report(model: bytes, accelerator: str) -> dict[str, Any]:
    """Vela's placement and estimates of one int8 flatbuffer on one accelerator ({'error': ...} when Vela refuses
    the model, e.g. float ops it cannot parse)."""
    with tempfile.TemporaryDirectory(prefix="deployc-vela-") as d:
        src, out = Path(d) / "model.tflite", Path(d) / "out"
        src.write_bytes(model)
        command = [sys.executable, "-m", "ethosu.vela", "--accelerator-config", accelerator]
        command += ["--show-cpu-operations", "--output-dir", str(out), str(src)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=d, check=False)
        except subprocess.TimeoutExpired:
            return {"compiler": f"vela {vela_version()}", "error": f"Vela did not finish within {TIMEOUT_S} s"}
        summary = next(iter(sorted(out.glob("*_summary_*.csv"))), None) if out.is_dir() else None
        if done.returncode != 0 or summary is None:
            return {"compiler": f"vela {vela_version()}", "error": _failure(done.stdout + "\n" + done.stderr)}
        with open(summary, newline="", encoding="utf-8") as f:
            row = next(csv.DictReader(f), {})
    return {"compiler": f"vela {vela_version()}", **parse_output(done.stdout), **_estimates(row)}


def _failure(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Warning: No ")]
    errors = [line for line in lines if "Error" in line or "error" in line or "Failed" in line]
    return " | ".join((errors or lines)[-3:])[:600] or "Vela failed without a message"


def parse_output(text: str) -> dict[str, Any]:
    """Op counts, the CPU ops with Vela's reason for each, and the system config Vela assumed, from its stdout."""
    reasons: dict[str, tuple[str, str]] = {}  # ofm tensor -> (TFLite op, reason)
    counts: dict[str, int] = {}
    settings: dict[str, str] = {}
    cpu: list[dict[str, str]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := _WARNING.match(line):
            block = []
            for follow in lines[i + 1 :]:
                if not follow.strip():
                    break
                block.append(follow.strip().removeprefix("Reason: "))
            reasons[m.group(2)] = (m.group(1), "; ".join(" ".join(b.split()) for b in block))
        elif m := _COUNT.match(line):
            counts[m.group(1)] = int(m.group(2))
        elif m := _SETTING.match(line):
            settings[m.group(1)] = m.group(2)
        elif (m := _PLACED.match(line)) and m.group(1) == "CPU":
            op, reason = _reason_of(m.group(3), reasons) or (m.group(2), "no reason given by Vela")
            cpu.append({"op": op, "tensor": m.group(3), "reason": reason})
    npu, on_cpu = counts.get("NPU", 0), counts.get("CPU", 0)
    return {
        "system_config": settings.get("System configuration"),
        "memory_mode": settings.get("Memory mode"),
        "npu_ops": npu,
        "cpu_ops": on_cpu,
        "npu_share": round(npu / (npu + on_cpu), 4) if npu + on_cpu else None,
        "cpu_fallback": cpu[:MAX_LISTED],  # the first ones; cpu_op_types counts them all
        "cpu_op_types": dict(sorted(collections.Counter(c["op"] for c in cpu).items())),
    }


def _reason_of(tensor: str, reasons: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """Vela's warning for the op writing `tensor`; it may name a tensor of the op's own decomposition
    ('<tensor>_act' for a fused activation)."""
    if tensor in reasons:
        return reasons[tensor]
    return next((r for name, r in sorted(reasons.items()) if name.startswith(tensor + "_")), None)


def _estimates(row: dict[str, str]) -> dict[str, Any]:
    """Vela's summary CSV: seconds and KiB, as ms and KiB (flash: on-chip plus off-chip)."""

    def number(key: str) -> float | None:
        try:
            return float(row[key])
        except (KeyError, TypeError, ValueError):
            return None

    seconds = number("inference_time")
    flash = [v for v in (number("on_chip_flash_memory_used"), number("off_chip_flash_memory_used")) if v is not None]
    cycles = number("cycles_total")
    return {
        "inference_ms": round(seconds * 1000, 4) if seconds is not None else None,
        "sram_kib": number("sram_memory_used"),
        "flash_kib": round(sum(flash), 2) if flash else None,
        "dram_kib": number("dram_memory_used"),
        "cycles": int(cycles) if cycles is not None else None,
    }


def npu_reports(model: bytes, accelerators: list[str]) -> dict[str, dict[str, Any]]:
    """compile_report() for each accelerator, by name."""
    return {a: compile_report(model, a) for a in accelerators}
