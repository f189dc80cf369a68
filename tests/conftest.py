"""Session-scoped fixtures: one trained digits model and one demo build shared by all tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from deployc.driver.build import BuildResult, build

# Every cache the suite (and the builds it spawns) would write goes to a temporary folder, never the user's home.
_CACHES = tempfile.mkdtemp(prefix="deployc-tests-")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
for _var in ("DEPLOYC_CACHE_DIR", "MPLCONFIGDIR", "HF_HOME", "XDG_CACHE_HOME"):
    os.environ[_var] = os.path.join(_CACHES, _var.lower())
# OpenVINO's telemetry writes ~/intel (a client id, usage counts) whenever openvino is imported, unless in CI.
os.environ["CI"] = "true"
# Ray writes a token to ~/.ray/auth_token for every local cluster it starts unless token auth is off (loopback only).
os.environ["RAY_AUTH_MODE"] = "disabled"
# One torch thread: the suite's models are tiny, and on a busy machine OpenMP's spinning threads cost 10-25x.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


DIGITS_INPUT = [{"name": "image", "shape": ["batch", 1, 8, 8]}]


def digits_config(**overrides: object) -> dict:
    """A build config for the trained digits CNN; keys in `overrides` replace top-level sections."""
    config = {
        "name": "digits",
        "model": {"factory": "deployc.examples.digits_cnn:pretrained", "inputs": DIGITS_INPUT},
        "data": {"validation": "digits:test", "calibration": "digits:train", "metric": "top1"},
        "targets": {"onnx": {"precision": ["fp32"]}},
        "validate": {"max_drift": 0.01, "latency_runs": 3},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def digits_model():
    from deployc.examples.digits_cnn import pretrained

    return pretrained()


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """The demo pipeline (onnx fp32 + int8) built once."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return build(digits_config(targets={"onnx": {"precision": ["fp32", "int8"]}}), out=out, quiet=True)


@pytest.fixture(scope="session")
def digits_onnx(demo_build: BuildResult) -> Path:
    """Path of the fp32 ONNX artifact of the demo build."""
    return demo_build.out_dir / "onnx" / "digits.fp32.onnx"


@pytest.fixture(scope="module")
def digits_proto(digits_onnx: Path):
    """The demo build's fp32 ONNX graph, loaded once per test module (tests may rewrite their copy)."""
    import onnx

    return onnx.load(str(digits_onnx))


@pytest.fixture(autouse=True)
def _nothing_kept_from_other_tests():
    """What a stage keeps for later remedy trials (memory.keep) is process state: a test that sizes batches from a
    budget must not see another test's kept values take part of it."""
    from deployc.core import memory

    memory.drop_kept()
    yield


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def tiny_factory(tmp_path: Path) -> Path:
    """A model file with an untrained tiny CNN factory (fast to export)."""
    return write(
        tmp_path / "tiny.py",
        """
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    """,
    )


def digits_npz(path: Path, n: int = 64, calib: bool = True) -> Path:
    from deployc.data.sources import digits_arrays

    x, y = digits_arrays("test")
    arrays = {"image": x[:n], "labels": y[:n]}
    if calib:
        arrays["calib_image"] = digits_arrays("train")[0][:n]
    np.savez(path, **arrays)
    return path


EDGE_MODEL = '''
import numpy as np
import torch
from torch import nn


class EdgeNet(nn.Module):
    """3-channel images -> logits over 5 classes (after x.mean((2, 3)), what Ethos-U ran on the CPU before) and
    the 4-D feature map (an NHWC output on tflite)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, image):
        features = self.dw(self.stem(image))
        return self.head(features.mean((2, 3))), features


def make():
    return EdgeNet().eval()


def images():
    x = np.random.default_rng(0).uniform(0, 1, (48, 3, 16, 16)).astype(np.float32)
    return [({"image": x[i : i + 8]}, None) for i in range(0, 48, 8)]
'''


def edge_config(folder: Path, **overrides: object) -> dict:
    """The EdgeNet build (written into `folder`): named outputs, labels file, normalize, version; onnx, tflite and
    tensorrt int8; Vela on ethos-u55-128 when installed."""
    write(folder / "edge.py", EDGE_MODEL)
    (folder / "labels.txt").write_text("cat\ndog\nbird\nfish\nfrog\n")
    config = {
        "name": "edge",
        "model": {
            "factory": "edge.py:make",
            "inputs": [
                {"name": "image", "shape": ["batch", 3, 16, 16], "normalize": {"mean": [0.4, 0.5, 0.6], "std": 0.25}}
            ],
            "outputs": ["logits", "features"],
            "labels": "labels.txt",
            "version": "2.1",
        },
        "data": {"validation": "edge.py:images", "calibration": "edge.py:images", "metric": "cosine"},
        "quantize": {"samples": 48},
        "targets": {
            "onnx": {"precision": ["fp32", "int8"]},
            "tflite": {"precision": ["fp32", "int8"], "npu": ["ethos-u55-128"]},
            "tensorrt": {"precision": ["int8"]},
        },
        "validate": {"max_drift": 0.05, "latency_runs": 1},
        "base_dir": str(folder),
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def edge_build(tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """EdgeNet built once on every target (tests/targets/test_edge_artifacts.py, tests/commands/test_package.py)."""
    folder = tmp_path_factory.mktemp("edge")
    return build(edge_config(folder), out=folder / "out", quiet=True)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """TinyMobile's trained weights (tests/tiny_mobile.py), trained once per session."""
    from tests.tiny_mobile import train_tiny

    return train_tiny(tmp_path_factory)
