"""Target tflite: litert-torch lowering, ai-edge-quantizer precisions, the NPU check and the interpreter run."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.core.config import load_config
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.driver.build import BuildResult, build, check
from deployc.errors import PipelineError
from deployc.targets.tflite import TfliteOptions, TfliteTarget
from deployc.targets.tflite_export import EdgeSignature
from deployc.targets.tflite_npu import npu_profile
from deployc.targets.tflite_quantize import quantize_flatbuffer
from tests.conftest import digits_config

pytestmark = pytest.mark.skipif(TfliteTarget.available() is not None, reason=str(TfliteTarget.available()))


@pytest.fixture(scope="module")
def tflite_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("tflite") / "out"
    config = digits_config(
        targets={"tflite": {"precision": ["fp32", "fp16", "dynamic", "int8"]}}, quantize={"samples": 256}
    )
    return build(config, out=out, quiet=True)


def _artifact(result: BuildResult, precision: str) -> dict:
    return next(a for a in result.manifest["artifacts"] if a["precision"] == precision)


def test_every_precision_passes_its_gate_on_the_interpreter(tflite_build):
    assert tflite_build.exit_code == 0
    for precision in ("fp32", "fp16", "dynamic", "int8"):
        art = _artifact(tflite_build, precision)
        assert art["runtime"] in ("ai-edge-litert", "tflite-runtime")
        assert art["gate"]["status"] == "pass", art["gate"]
        assert art["metrics"]["drift"] <= 0.01 and art["metrics"]["samples"] == 450
    assert _artifact(tflite_build, "fp32")["metrics"]["max_abs_err"] < 1e-4  # same float graph as torch
    int8 = _artifact(tflite_build, "int8")["metrics"]
    assert int8["agreement"] >= 0.98
    assert int8["max_abs_err"] < 1.0  # 'minmax' = global range; a moving average would clip logits by ~4


def test_quantized_flatbuffers_are_smaller(tflite_build):
    fp32 = _artifact(tflite_build, "fp32")["bytes"]
    assert _artifact(tflite_build, "fp16")["bytes"] < 0.7 * fp32
    assert _artifact(tflite_build, "int8")["bytes"] < 0.5 * fp32
    assert _artifact(tflite_build, "fp16")["details"]["ops"].get("DEQUANTIZE", 0) >= 5  # fp16 weights, float compute


def test_int8_model_is_integer_only_and_its_manifest_feeds_it(tflite_build, digits_model):
    art = _artifact(tflite_build, "int8")
    npu = art["details"]["npu"]
    assert (npu["integer_only"], npu["float_ops"], npu["float_io_conversions"]) == (True, [], [])
    assert npu["check"].startswith("quick check only") and "accelerators" not in npu
    (inp,), (out,) = art["inputs"], art["outputs"]
    assert inp["name"] == "image" and inp["dtype"] == "int8" and inp["shape"] == [1, 8, 8, 1]
    assert inp["layout"] == "nhwc" and out["layout"] is None and out["name"] == "output_0"
    assert out["dtype"] == "int8" and out["quantization"]["scale"] > 0
    # an app developer's loop: quantize with the manifest's numbers, run, dequantize
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(tflite_build.out_dir / art["path"])).get_signature_runner()
    x, _ = digits_arrays("test")
    q_in, q_out = inp["quantization"], out["quantization"]
    agree = 0
    for i in range(40):
        nhwc = x[i : i + 1].transpose(0, 2, 3, 1)
        xi = np.clip(np.round(nhwc / q_in["scale"]) + q_in["zero_point"], -128, 127).astype(np.int8)
        yi = runner(**{inp["signature_key"]: xi})[out["signature_key"]]
        logits = (yi.astype(np.float32) - q_out["zero_point"]) * q_out["scale"]
        ref = digits_model(torch.from_numpy(x[i : i + 1])).detach().numpy()
        agree += int(logits.argmax() == ref.argmax())
    assert agree >= 39


def _ctx(samples: int = 64) -> Context:
    config = load_config(digits_config(quantize={"samples": samples, "per_channel": False}))
    x, y = digits_arrays("train")
    return Context(config, None, Dataset({"image": x}, y, "digits:train"), None, None, Instruments(quiet=True))


def test_float_io_int8_keeps_only_edge_conversions_and_fp32_lists_float_ops(tflite_build, monkeypatch):
    fp32 = (tflite_build.out_dir / _artifact(tflite_build, "fp32")["path"]).read_bytes()
    signature = EdgeSignature(("image",), ("output_0",), ("nhwc",), (None,))
    model, details = quantize_flatbuffer(fp32, "int8", _ctx(), "float32", signature)
    npu = npu_profile(model)
    assert npu["integer_only"] and sorted(e.split("#")[0] for e in npu["float_io_conversions"]) == [
        "DEQUANTIZE",
        "QUANTIZE",
    ]
    assert details["calibration_samples"] == 64 and details["per_channel"] is False
    float_model = npu_profile(fp32)
    assert not float_model["integer_only"]
    assert {"CONV_2D", "FULLY_CONNECTED"} <= {o["op"] for o in float_model["float_ops"]}
    assert float_model["float_op_count"] == len(float_model["float_ops"]) == sum(float_model["float_op_types"].values())
    monkeypatch.setattr("deployc.targets.tflite_npu.MAX_LISTED", 2)  # a long float graph: listed in part, all counted
    capped = npu_profile(fp32)
    assert len(capped["float_ops"]) == 2 and capped["float_op_count"] == float_model["float_op_count"] > 2
    assert capped["float_op_types"] == float_model["float_op_types"]


def test_int8_requires_calibration_and_torch_level():
    assert TfliteTarget.requires_for(TfliteOptions(precision=["int8"])) == {"data.calibration"}
    assert TfliteTarget.requires_for(TfliteOptions(precision=["fp32", "fp16"])) == frozenset()
    config = digits_config(
        model={"onnx": "model.onnx", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}]}, targets={"tflite": {}}
    )
    with pytest.raises(PipelineError, match="torch"):
        check(config)
    with pytest.raises(PipelineError, match="io_dtype"):
        check(digits_config(targets={"tflite": {"io_dtype": "uint16"}}))


def test_available_names_the_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else real(name, *a)
    )
    assert "litert-torch" in TfliteTarget.available()


TOKEN_MODEL = '''
import numpy as np
import torch
from torch import nn


class TokenClassifier(nn.Module):
    """Token ids and an attention mask (int64, as tokenizers give them) → mean of masked embeddings → 4 classes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(100, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def make():
    return TokenClassifier().eval()


def tokens():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (48, 12)).astype(np.int64)
    mask = (np.arange(12)[None, :] < rng.integers(4, 13, (48, 1))).astype(np.int64)
    return [({"input_ids": ids * mask, "attention_mask": mask}, None)]
'''


def test_int64_inputs_to_int8(tmp_path):
    """litert-torch makes int64 inputs int32: the calibration feeds int32, the integer inputs stay unquantized,
    and the manifest gives the flatbuffer's real input dtypes (what an app must feed)."""
    (tmp_path / "tokens.py").write_text(TOKEN_MODEL)
    spec = [{"name": n, "shape": ["batch", 12], "dtype": "int64"} for n in ("input_ids", "attention_mask")]
    config = {
        "name": "tokens",
        "model": {"factory": f"{tmp_path}/tokens.py:make", "inputs": spec},
        "data": {
            "validation": f"{tmp_path}/tokens.py:tokens",
            "calibration": f"{tmp_path}/tokens.py:tokens",
            "metric": "cosine",
        },
        "targets": {"tflite": {"precision": ["fp32", "dynamic", "int8"]}},
        "validate": {"max_drift": 0.02, "latency_runs": 2},
    }
    result = build(config, out=tmp_path / "out", quiet=True)
    assert result.exit_code == 0, [a["gate"] for a in result.manifest["artifacts"]]
    for precision in ("fp32", "dynamic", "int8"):
        art = _artifact(result, precision)
        assert [(i["name"], i["dtype"], i["quantization"]) for i in art["inputs"]] == [
            ("input_ids", "int32", None),
            ("attention_mask", "int32", None),
        ]
    int8 = _artifact(result, "int8")
    assert int8["details"]["int8_coverage"]["macs"] == 1.0 and int8["metrics"]["cosine"] > 0.99
    assert int8["outputs"][0]["dtype"] == "int8"
