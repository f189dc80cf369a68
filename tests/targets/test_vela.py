"""The NPU check with Arm's Vela: its placement and reasons parsed, real runs on int8 artifacts, the min_npu_ops
gate, and what is said when Vela is not installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployc.compiler.contracts import Artifact, Context
from deployc.compiler.instruments import Instruments
from deployc.core.config import load_config
from deployc.driver.build import build
from deployc.errors import UsageError
from deployc.targets import tflite_npu, vela
from deployc.targets.tflite import TfliteOptions, TfliteTarget
from deployc.targets.vela import QUICK_CHECK, parse_output, vela_missing
from deployc.validation.gate import npu_gate
from tests.conftest import digits_config, edge_config, write

needs_vela = pytest.mark.skipif(vela_missing() is not None, reason=str(vela_missing()))
needs_tflite = pytest.mark.skipif(TfliteTarget.available() is not None, reason=str(TfliteTarget.available()))

VELA_OUTPUT = """Warning: No system configuration specified. Using a default of Ethos_U55_High_End_Embedded.

Warning (supported operators) operator: MEAN, ofm: 'MeanHead;1'
Reason: Unsupported depth-reduction.  IFM: 1, 16, 16, 16
Reduction over depth is only supported if any of h,w,c == 1

Warning (supported operators) operator: DEPTHWISE_CONV_2D, ofm: 'Crepe;;Crepe/Conv2d_conv1;1_act'
Reason: Unsupported kernel stride: 1, 4

Network summary for meanhead.int8
Accelerator configuration               Ethos_U55_128
System configuration             Ethos_U55_High_End_Embedded
Memory mode                               Shared_Sram

CPU operators = 2 (18.2%)
   CPU: Passthrough = MeanHead;1 (outputs [1, 1, 1, 16])
   CPU: Passthrough = Crepe;;Crepe/Conv2d_conv1;1 (outputs [1, 1, 256, 128])
NPU operators = 9 (81.8%)
   NPU: Transpose = #40 (outputs [1, 32, 32, 3])
   NPU: Conv2D = MeanHead/Sequential_conv/Hardswish_2; (outputs [1, 16, 16, 16])
"""


def test_vela_output_gives_counts_settings_and_a_reason_per_cpu_op():
    parsed = parse_output(VELA_OUTPUT)
    assert (parsed["npu_ops"], parsed["cpu_ops"], parsed["npu_share"]) == (9, 2, 0.8182)
    assert (parsed["system_config"], parsed["memory_mode"]) == ("Ethos_U55_High_End_Embedded", "Shared_Sram")
    mean, conv = parsed["cpu_fallback"]
    assert mean["op"] == "MEAN" and mean["tensor"] == "MeanHead;1"
    assert mean["reason"].startswith("Unsupported depth-reduction. IFM: 1, 16, 16, 16; Reduction over depth")
    # the warning names the op's fused activation ('..._act'), the CPU line the op itself
    assert (conv["op"], conv["reason"]) == ("DEPTHWISE_CONV_2D", "Unsupported kernel stride: 1, 4")


def _with_npu(accelerators: dict) -> Artifact:
    return Artifact("tflite", "int8", None, "ai-edge-litert", "", details={"npu": {"accelerators": accelerators}})


def test_min_npu_ops_gate_names_each_cpu_op_with_vela_reason():
    full = {"npu_ops": 10, "cpu_ops": 0, "npu_share": 1.0, "cpu_fallback": []}
    partial = {
        **parse_output(VELA_OUTPUT),
        "npu_share": 0.9,
        "cpu_fallback": parse_output(VELA_OUTPUT)["cpu_fallback"][:1],
    }
    assert npu_gate(_with_npu({"ethos-u55-128": full}), 1.0) is None
    assert npu_gate(_with_npu({"ethos-u55-128": partial}), None) is None  # unset: no gate
    gate = npu_gate(_with_npu({"ethos-u55-128": full, "ethos-u65-256": partial}), 0.95)
    assert gate["status"] == "fail" and "ethos-u65-256: 90% of ops on the NPU" in gate["reason"]
    assert "MEAN: Unsupported depth-reduction" in gate["reason"] and "ethos-u55-128" not in gate["reason"]
    refused = npu_gate(_with_npu({"ethos-u55-128": {"error": "Failed to parse TFLite file"}}), 0.5)
    assert refused["status"] == "fail" and "not compiled (Failed to parse TFLite file)" in refused["reason"]


def test_thousands_of_cpu_ops_are_counted_all_and_listed_in_part():
    """An unrolled LSTM leaves thousands of ops on the CPU: the report lists the first MAX_LISTED with Vela's
    reason and counts every one by type, and the gate and report say how many the list leaves out."""
    ops = [("ADD", f"lstm;{i}") for i in range(30)] + [("LOGISTIC", f"lstm;{i}") for i in range(30, 45)]
    text = "".join(
        f"Warning (supported operators) operator: {op}, ofm: '{t}'\nReason: Unsupported dataType Float32\n\n"
        for op, t in ops
    )
    text += "CPU operators = 45 (90.0%)\n" + "".join(f"   CPU: Passthrough = {t} (outputs [1, 4])\n" for _, t in ops)
    text += "NPU operators = 5 (10.0%)\n"
    parsed = parse_output(text)
    assert (parsed["cpu_ops"], len(parsed["cpu_fallback"])) == (45, vela.MAX_LISTED)
    assert parsed["cpu_op_types"] == {"ADD": 30, "LOGISTIC": 15}
    assert parsed["cpu_fallback"][0] == {"op": "ADD", "tensor": "lstm;0", "reason": "Unsupported dataType Float32"}
    gate = npu_gate(_with_npu({"ethos-u55-128": parsed}), 0.5)
    assert "; … 13 more on the CPU (all CPU ops: ADD×30, LOGISTIC×15)" in gate["reason"]
    assert gate["reason"].count("Unsupported dataType Float32") == vela.MAX_LISTED


@needs_tflite
def test_without_vela_the_quick_check_says_what_it_is_and_min_npu_ops_is_refused(monkeypatch, tmp_path, edge_build):
    monkeypatch.setattr(tflite_npu, "vela_missing", lambda: "Vela is not installed (pip install 'deployc[npu]')")
    monkeypatch.setattr("deployc.targets.tflite.vela_missing", tflite_npu.vela_missing)
    int8 = (edge_build.out_dir / "tflite" / "edge.int8.tflite").read_bytes()
    profile = tflite_npu.npu_profile(int8, ["ethos-u55-128"])
    assert profile["integer_only"] and "accelerators" not in profile
    assert profile["check"] == f"{QUICK_CHECK}; Vela is not installed (pip install 'deployc[npu]')"
    config = load_config(digits_config(validate={"max_drift": 0.01, "min_npu_ops": 0.9}))
    ctx = Context(config, None, None, None, tmp_path, Instruments(quiet=True))
    with pytest.raises(UsageError, match=r"validate.min_npu_ops: Vela is not installed"):
        TfliteTarget(TfliteOptions(precision=["int8"], npu=["ethos-u55-128"]))._check_npu(ctx)
    with pytest.raises(UsageError, match="name the accelerators Vela checks in targets.tflite.npu"):
        TfliteTarget(TfliteOptions(precision=["int8"]))._check_npu(ctx)
    TfliteTarget(TfliteOptions(precision=["fp32"], npu=["ethos-u55-128"]))._check_npu(ctx)  # no int8: nothing to gate


@needs_vela
@needs_tflite
def test_edge_int8_runs_wholly_on_the_ethos_u55(edge_build):
    art = next(a for a in edge_build.manifest["artifacts"] if (a["target"], a["precision"]) == ("tflite", "int8"))
    npu = art["details"]["npu"]
    assert npu["check"] == "vela" and npu["integer_only"]
    report = npu["accelerators"]["ethos-u55-128"]
    assert report["npu_share"] == 1.0 and report["cpu_ops"] == 0 and report["cpu_fallback"] == []
    assert report["inference_ms"] > 0 and report["sram_kib"] > 0 and report["compiler"].startswith("vela ")
    assert report["system_config"] == "Ethos_U55_High_End_Embedded"
    text = (edge_build.out_dir / "report.md").read_text()
    assert "## NPU placement (Vela)" in text and "| tflite/int8 | ethos-u55-128 |" in text


CHANNEL_MEAN = '''
import torch
from torch import nn


class ChannelMean(nn.Module):
    """A mean over channels and width: a depth reduction the Ethos-U cannot run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, image):
        return self.head(torch.relu(self.conv(image)).mean((1, 3)))


def make():
    return ChannelMean().eval()
'''


@needs_vela
@needs_tflite
def test_min_npu_ops_fails_the_build_naming_the_op_vela_leaves_on_the_cpu(tmp_path: Path):
    config = edge_config(tmp_path)
    write(tmp_path / "channel_mean.py", CHANNEL_MEAN)
    config["model"] = {"factory": "channel_mean.py:make", "inputs": config["model"]["inputs"]}
    config["data"] = {**config["data"], "metric": "cosine"}
    config["targets"] = {"tflite": {"precision": ["int8"], "npu": ["ethos-u55-128"]}}
    config["validate"] = {"max_drift": 0.05, "min_npu_ops": 1.0, "latency_runs": 1}
    result = build(config, out=tmp_path / "out", quiet=True)
    (art,) = result.manifest["artifacts"]
    assert result.exit_code == 3 and art["gate"]["status"] == "fail"
    assert art["gate"]["reason"].startswith("below validate.min_npu_ops 100%: ethos-u55-128:")
    assert "MEAN: Unsupported depth-reduction" in art["gate"]["reason"]
    assert "remedies" not in art["details"]  # an NPU gate is not a drift a quantization remedy could fix
