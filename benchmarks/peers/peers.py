"""Run peer int8 quantizers from deployc's own venv: each peer lives in its own venv (they pin
conflicting onnx/onnxruntime/numpy), so this calls run_peer.py with that venv's python.

    from peers import available_peers, quantize_with_peer
    available_peers()        # {"ort": None, "inc": "no venv at .peers/inc (run setup_venvs.sh)", ...}
    quantize_with_peer("modelopt", "m.onnx", "calib.npz", "m.modelopt.onnx")   # -> run_peer's JSON report

Venvs come from benchmarks/peers/setup_venvs.sh; their folder is $DEPLOYC_PEERS_DIR or REPO/.peers.
Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("ort", "modelopt", "olive", "inc", "nncf")
# What each venv must import for the peer to count as available.
MODULES = {
    "ort": "onnxruntime.quantization",
    "modelopt": "modelopt.onnx.quantization",
    "olive": "olive.passes.onnx.quantization",
    "inc": "onnx_neural_compressor.quantization",
    "nncf": "nncf, openvino",
}


class PeerError(RuntimeError):
    """A peer could not quantize the model; the message is the peer's own error."""

    def __init__(self, report: dict):
        super().__init__(f"{report.get('tool')}: {report.get('error')}")
        self.report = report


def peers_dir() -> Path:
    return Path(os.environ.get("DEPLOYC_PEERS_DIR", HERE.parent.parent / ".peers"))


def peer_python(tool: str) -> Path:
    if tool not in TOOLS:
        raise ValueError(f"unknown peer {tool!r}; choose from {', '.join(TOOLS)}")
    return peers_dir() / tool / "bin" / "python"


def available_peers() -> dict[str, str | None]:
    """None for each peer that can run here, else the reason it cannot."""
    found = {}
    for tool in TOOLS:
        python = peer_python(tool)
        if not python.exists():
            found[tool] = f"no venv at {python.parent.parent} (run benchmarks/peers/setup_venvs.sh)"
            continue
        probe = subprocess.run([str(python), "-c", f"import {MODULES[tool]}"], capture_output=True, text=True)
        lines = probe.stderr.strip().splitlines()
        found[tool] = None if probe.returncode == 0 else f"import {MODULES[tool]} failed: {lines[-1] if lines else ''}"
    return found


def quantize_with_peer(
    tool: str,
    onnx_path,
    calib_npz,
    out_path,
    *,
    samples: int | None = None,
    options: dict | None = None,
    timeout: float = 1800,
    log=None,
) -> dict:
    """Quantize onnx_path with one peer; returns run_peer's report, raises PeerError if the peer fails.

    options override keywords of the peer's own API (see run_peer.py); log is a file for the peer's chatter.
    """
    python = peer_python(tool)
    if not python.exists():
        raise PeerError({"tool": tool, "error": f"no venv at {python.parent.parent} (run setup_venvs.sh)"})
    cmd = [
        str(python),
        str(HERE / "run_peer.py"),
        "--tool",
        tool,
        "--onnx",
        str(onnx_path),
        "--calib",
        str(calib_npz),
        "--out",
        str(out_path),
    ]
    if samples:
        cmd += ["--samples", str(samples)]
    for key, value in (options or {}).items():
        cmd += ["--option", f"{key}={json.dumps(value)}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log or subprocess.PIPE, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        raise PeerError({"tool": tool, "error": f"run_peer.py exited {proc.returncode}: " + " | ".join(tail)})
    report = json.loads(lines[-1])
    if not report.get("ok"):
        raise PeerError(report)
    return report
