"""TensorRT engines on a real GPU: build through the Python API, run through its runtime (skipped without one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deployc.driver.build import BuildResult, build
from deployc.targets.tensorrt import EngineRunner, engine_unavailable
from tests.conftest import digits_config

REASON = engine_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"TensorRT engine tests: {REASON}")


@pytest.fixture(scope="module")
def engine_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    out = tmp_path_factory.mktemp("engine") / "out"
    targets = {
        "tensorrt": {"precision": ["fp32", "fp16", "int8"], "profile": {"batch": {"min": 1, "opt": 16, "max": 64}}}
    }
    return build(digits_config(targets=targets), out=out, quiet=True)


def test_every_precision_builds_an_engine_that_passes_its_gate(engine_build):
    assert engine_build.exit_code == 0
    for art in engine_build.manifest["artifacts"]:
        assert art["runtime"] == "tensorrt", art["details"]["engine"]
        assert art["details"]["engine"].startswith("built: ")
        built = art["details"]["engine_build"]
        assert built["tensorrt_version"] and built["compute_capability"].count(".") == 1 and built["device"]
        engine = engine_build.out_dir / "tensorrt" / built["file"]
        assert engine.stat().st_size == built["bytes"] > 0
        assert art["metrics"]["drift"] <= 0.01 and art["gate"]["status"] == "pass"
        cache = Path(built["timing_cache"])
        assert (cache if cache.is_absolute() else engine_build.out_dir / cache).stat().st_size > 0


def test_engine_honours_the_dynamic_batch_profile(engine_build):
    art = next(a for a in engine_build.manifest["artifacts"] if a["precision"] == "fp32")
    runner = EngineRunner(engine_build.out_dir / "tensorrt" / art["details"]["engine_build"]["file"])
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    full = runner({"image": x})[0]
    one = runner({"image": x[:1]})[0]
    assert full.shape == (64, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one, full[:1], atol=1e-4)
