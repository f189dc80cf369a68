"""A smoothed graph's calibration (issue 25): the fp32 graph's statistics serve every tensor upstream of what
smoothing changed, and only the changed tensors and those computed from them are measured on the smoothed graph;
the ranges equal a calibration of the smoothed graph alone, for the Mul smoothing inserts and for a division
folded into a LayerNorm (whose output keeps its name: the root's range would not hold for it)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import onnx
import pytest

from deployc.core.state import ModelState, TensorSpec
from deployc.passes import calibration
from deployc.passes.export import export_onnx
from deployc.passes.simplify import SimplifyConfig, simplify_stages
from deployc.passes.smoothquant import smooth
from tests.tiny_bert import SEQ, TinyBert, token_arrays, token_dataset

INPUTS = tuple(TensorSpec(n, ("batch", SEQ), "int64") for n in ("input_ids", "attention_mask"))


@functools.cache
def _smoothed(folded: bool) -> tuple[onnx.ModelProto, onnx.ModelProto, frozenset[str]]:
    """(fp32 graph, smoothed graph, the tensors smoothing changed); `folded`: a LayerNorm absorbs one division."""
    proto = export_onnx(TinyBert(pre_norm_head=folded).eval(), ModelState(inputs=INPUTS))
    root, _ = simplify_stages(proto, SimplifyConfig(), token_arrays(2))
    smoothed, done = smooth(root, token_dataset(24), alpha=0.5)
    assert done.changed and done.muls and bool(done.folded) == folded
    return root, smoothed, done.changed


@pytest.fixture(params=[False, True], ids=["mul", "folded"])
def graphs(request) -> tuple[onnx.ModelProto, onnx.ModelProto, frozenset[str]]:
    return _smoothed(request.param)


def _cold(monkeypatch) -> list[str]:
    """Empty memos, and the names of the passes that run from here on."""
    monkeypatch.setattr(calibration, "_MEMO", {})
    monkeypatch.setattr(calibration, "_STATS", {})
    passes: list[str] = []
    for name in ("_minmax_pass", "_histogram_pass"):
        original = getattr(calibration, name)
        monkeypatch.setattr(calibration, name, lambda *a, _f=original, _n=name: passes.append(_n) or _f(*a))
    return passes


def _ranges(root, graph, method, path, changed=None) -> dict:
    cache = calibration.calibration_cache(root, graph, token_dataset(24), method, 8, 99.9, path, changed)
    return json.loads(Path(cache).read_text())["data"]


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_smoothed_ranges_from_the_roots_statistics_equal_its_own_calibration(graphs, method, tmp_path, monkeypatch):
    root, smoothed, changed = graphs
    _cold(monkeypatch)
    alone = _ranges(smoothed, smoothed, method, tmp_path)
    passes = _cold(monkeypatch)
    roots = _ranges(root, root, method, tmp_path)  # the first trial: the root's ranges
    before = len(passes)
    derived = _ranges(root, smoothed, method, tmp_path, changed)
    assert derived == alone and len(alone) > 20
    # one run of the smoothed graph over the changed tensors and those computed from them only
    assert passes[before:] == ["_histogram_pass"]
    fresh = calibration.downstream(smoothed, set(changed)) & set(alone)
    assert fresh and len(fresh) < len(alone)  # on a transformer most tensors follow the first smoothed layer
    assert all(derived[n] == roots[n] for n in set(alone) - fresh)  # read off the root's statistics
