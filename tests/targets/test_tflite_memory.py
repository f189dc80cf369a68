"""TFLite artifacts inside the memory budget (core/memory.py): their bytes a sample come from the flatbuffer's own
tensors, validation sizes its batches by them through the same Guard as ONNX artifacts, an artifact whose one
sample does not fit is `error` with the reason, and small batches give the same metrics as large ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.core import memory
from deployc.driver.build import BuildResult, build
from deployc.targets.tflite import TfliteTarget
from deployc.targets.tflite_flatbuffer import activations
from tests.conftest import digits_config

pytestmark = pytest.mark.skipif(TfliteTarget.available() is not None, reason=str(TfliteTarget.available()))

TARGETS = {"onnx": {"precision": ["fp32"]}, "tflite": {"precision": ["fp32"]}}


def _build(folder: Path, **build_section: object) -> BuildResult:
    config = digits_config(targets=TARGETS, validate={"max_drift": 0.01, "latency_runs": 1}, build=build_section)
    return build(config, out=folder / "out", quiet=True)


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    return _build(tmp_path_factory.mktemp("default"))


def _artifacts(result: BuildResult) -> dict[str, dict]:
    return {f"{a['target']}/{a['precision']}": a for a in result.manifest["artifacts"]}


def test_the_estimate_counts_every_tensor_the_interpreter_computes_and_no_weight(default_build):
    from ai_edge_litert.interpreter import Interpreter

    path = default_build.out_dir / _artifacts(default_build)["tflite/fp32"]["path"]
    est = activations(path)
    interp = Interpreter(model_path=str(path))
    details = {str(d["index"]): d for d in interp.get_tensor_details()}
    computed = {str(i) for op in interp._get_ops_details() for i in op["outputs"]}
    computed |= {str(d["index"]) for d in interp.get_input_details()}
    assert set(est.tensors) == computed
    for index, size in est.tensors.items():
        d = details[index]
        assert size == int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
    weights = sum(int(np.prod(d["shape"])) * 4 for i, d in details.items() if i not in computed)
    assert max(est.tensors.values()) < est.peak < sum(est.tensors.values()) < weights


def test_a_budget_that_fits_two_samples_gives_the_same_metrics_as_the_default(default_build, tmp_path: Path):
    assert default_build.exit_code == 0
    tflite = default_build.out_dir / _artifacts(default_build)["tflite/fp32"]["path"]
    per_sample = activations(tflite).peak
    small = _build(tmp_path, max_memory=int(2.5 * per_sample))
    assert small.exit_code == 0
    for label, art in _artifacts(small).items():
        before = _artifacts(default_build)[label]["metrics"]
        assert art["gate"] == _artifacts(default_build)[label]["gate"], label
        for key in ("metric_ref", "metric", "drift", "agreement", "samples"):
            assert art["metrics"][key] == before[key], (label, key)
        # the torch reference itself (batch 1 here, 64 there): its kernels round differently in the last bit
        assert art["metrics"]["max_abs_err"] == pytest.approx(before["max_abs_err"], abs=1e-6)
        assert art["metrics"]["cosine"] == pytest.approx(before["cosine"], abs=1e-12)


def test_each_artifacts_outputs_are_the_same_at_the_guards_batches_as_at_the_requested_one(default_build):
    from deployc.compiler.contracts import Artifact
    from deployc.data.dataset import Dataset
    from deployc.data.reference import run_batched
    from deployc.data.sources import digits_arrays
    from deployc.targets.onnx import OnnxOptions, OnnxTarget
    from deployc.targets.tflite import TfliteOptions
    from deployc.validation.gate import inference_batches

    data = Dataset({"image": digits_arrays("test")[0][:50]}, None, "digits")
    for label, target in (("tflite/fp32", TfliteTarget(TfliteOptions())), ("onnx/fp32", OnnxTarget(OnnxOptions()))):
        entry = _artifacts(default_build)[label]
        path = default_build.out_dir / entry["path"]
        art = Artifact(
            entry["target"], "fp32", path, entry["runtime"], "", inputs=entry["inputs"], outputs=entry["outputs"]
        )
        whole = run_batched(lambda x, t=target, a=art: t.infer(a, x), data, 64)
        per_sample = target.activations(art, next(data.batches(1))[0]).peak
        with memory.applied(memory.Budget(2 * per_sample + 1, "test")):
            guard = inference_batches(target, art, data, 64)
            small = run_batched(lambda x, t=target, a=art: t.infer(a, x), data, guard)
        assert set(guard.sizes) == {2}, label
        np.testing.assert_array_equal(small[0], whole[0])


def test_validation_batches_of_a_tflite_artifact_come_from_its_estimate(default_build):
    from deployc.compiler.contracts import Artifact
    from deployc.data.dataset import Dataset
    from deployc.data.sources import digits_arrays
    from deployc.targets.tflite import TfliteOptions
    from deployc.validation.gate import inference_batches

    entry = _artifacts(default_build)["tflite/fp32"]
    path = default_build.out_dir / entry["path"]
    artifact = Artifact("tflite", "fp32", path, entry["runtime"], "", inputs=entry["inputs"], outputs=entry["outputs"])
    target = TfliteTarget(TfliteOptions())
    x, _ = digits_arrays("test")
    data = Dataset({"image": x[:20]}, None, "digits")
    per_sample = activations(path).peak
    with memory.applied(memory.Budget(3 * per_sample + 1, "test")):
        guard = inference_batches(target, artifact, data, 64)
        list(data.batches(guard))
    assert guard.sizes == [3, 3, 3, 3, 3, 3, 2]


def test_a_tflite_artifact_whose_one_sample_does_not_fit_is_not_validated_and_says_why(default_build):
    from deployc.compiler.contracts import Artifact
    from deployc.core.config import ValidateConfig
    from deployc.data.dataset import Dataset
    from deployc.data.sources import digits_arrays
    from deployc.targets.tflite import TfliteOptions
    from deployc.validation.gate import validate_artifact
    from deployc.validation.remedies import unvalidated_reason

    entry = _artifacts(default_build)["tflite/fp32"]
    path = default_build.out_dir / entry["path"]
    artifact = Artifact("tflite", "fp32", path, entry["runtime"], "", inputs=entry["inputs"], outputs=entry["outputs"])
    per_sample = activations(path).peak
    data = Dataset({"image": digits_arrays("test")[0][:8]}, None, "digits")
    budget = memory.Budget(per_sample - 100, "build.max_memory")
    with memory.applied(budget), pytest.raises(memory.MemoryBudgetExceeded) as raised:
        validate_artifact(TfliteTarget(TfliteOptions()), artifact, data, None, ValidateConfig(), 64)
    reason = unvalidated_reason(raised.value, str(raised.value))  # the gate's reason, as the driver writes it
    assert reason.startswith(f"not validated: validating tflite/fp32 needs {memory.size_text(per_sample)} for one")
    assert "(build.max_memory)" in reason


def test_a_scored_only_onnx_run_sleeps_its_idle_threads_and_gives_the_same_outputs(default_build):
    from deployc.compiler.contracts import Artifact
    from deployc.data.dataset import Dataset
    from deployc.data.reference import run_batched
    from deployc.data.sources import digits_arrays
    from deployc.targets.onnx import OnnxOptions, OnnxTarget

    data = Dataset({"image": digits_arrays("test")[0][:50]}, None, "digits")
    entry = _artifacts(default_build)["onnx/fp32"]
    art = Artifact("onnx", "fp32", default_build.out_dir / entry["path"], entry["runtime"], "")
    target, key = OnnxTarget(OnnxOptions()), f"{entry['runtime']}:{default_build.out_dir / entry['path']}"

    def spins() -> bool:  # onnxruntime's default (no entry: the getter raises) spins
        try:
            return target._sessions[key].get_session_options().get_session_config_entry(spinning) != "0"
        except RuntimeError:
            return True

    spinning = "session.intra_op.allow_spinning"
    timed = run_batched(lambda x: target.infer(art, x), data, 64)
    assert spins()  # as deployed
    target.close(art)
    target.scored_only(art)
    scored = run_batched(lambda x: target.infer(art, x), data, 64)
    assert not spins()
    np.testing.assert_array_equal(scored[0], timed[0])
    target.close(art)  # the mark goes with the session: the next opening is as deployed again
    target.infer(art, next(data.batches(1))[0])
    assert spins()
