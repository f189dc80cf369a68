"""Rows of tests/pipeline/test_hostile.py about what a path can point at, and what user code can print or plant:
FIFOs and devices where a file is expected (a read would block forever), pickles hidden in data, YAML tags that
would run code, oversized timing requests, user code printing into --json, links planted in the pass cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tests.pipeline.hostile_support import Env, config, data_npz, ok_build, write_config


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def fifo_weights(env: Env) -> None:
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["weights"] = str(_fifo(env.tmp / "w.safetensors"))
    env.build(cfg)


def device_weights(env: Env) -> None:
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["weights"] = "/dev/zero"
    env.validate(cfg)


def fifo_validation_data(env: Env) -> None:
    _fifo(env.tmp / "data.npz")
    env.validate(config(env.tmp))


def fifo_config(env: Env) -> None:
    env.cli("validate-config", _fifo(env.tmp / "c.yaml"))


def npz_with_object_array(env: Env) -> None:
    data_npz(env.tmp, x=np.array([{"pickled": 1}] * 64, dtype=object))
    env.validate(config(env.tmp))


def yaml_python_tag(env: Env) -> None:
    marker = env.tmp / "pwned"
    write_config(env.tmp, f'name: h\nmodel: !!python/object/apply:os.system ["touch {marker}"]\n')
    env.cli("validate-config", env.tmp / "c.yaml")


def nothing_ran(env: Env) -> None:
    assert not (env.tmp / "pwned").exists()


def latency_runs_huge(env: Env) -> None:
    data_npz(env.tmp)
    env.validate(config(env.tmp, validate={"latency_runs": 10**9}))


def printing_factory_json(env: Env) -> None:
    (env.tmp / "noisy.py").write_text(
        "import torch\nprint('hello from import')\n"
        "def make():\n    print('making the model')\n    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(8, 5))\n"
    )
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["factory"] = "noisy.py:make"
    env.build(cfg, "--json")


def stdout_is_json(env: Env) -> None:
    assert json.loads(env.stdout)["status"] == "passed"  # the factory's prints did not reach stdout


def cache_links_to_user_files(env: Env) -> None:
    """The pass cache holds links someone planted to a folder and a file of the user's; prune removes everything."""
    env.mp.setenv("DEPLOYC_CACHE_DIR", str(env.tmp / "cache"))
    ok_build(env)
    (env.tmp / "mine").mkdir()
    (env.tmp / "mine" / "model.onnx").write_text("precious")
    passes = env.tmp / "cache" / "passes"
    (passes / "zz").symlink_to(env.tmp / "mine")
    (next(p for p in passes.iterdir() if p.name != "zz") / "evil.onnx").symlink_to(env.tmp / "mine" / "model.onnx")
    env.cli("cache", "prune", "--max-size", "0")


def user_files_intact(env: Env) -> None:
    assert "0 entries" in env.stdout  # the cache's own entries are gone
    assert (env.tmp / "mine" / "model.onnx").read_text() == "precious"


FILE_ROWS = [
    ("weights_is_a_fifo", fifo_weights, 2, r"model\.weights: '.*w\.safetensors' is not a regular file \(a FIFO"),
    ("weights_is_dev_zero", device_weights, 2, r"model\.weights: '/dev/zero' is not a regular file"),
    ("validation_npz_is_a_fifo", fifo_validation_data, 2, r"data\.validation: '.*data\.npz' is not a regular file"),
    ("config_is_a_fifo", fifo_config, 2, r"config: .*c\.yaml' is not a regular file \(a FIFO"),
    ("npz_with_pickled_object_array", npz_with_object_array, 2, r"Object arrays cannot be loaded"),
    ("yaml_python_tag_runs_nothing", yaml_python_tag, 2, r"could not determine a constructor", nothing_ran),
    ("latency_runs_a_billion", latency_runs_huge, 2, r"validate\.latency_runs: Input should be less than"),
    ("factory_prints_into_json_stdout", printing_factory_json, 0, r"^$", stdout_is_json),  # --json: stderr quiet
    ("cache_prune_with_planted_links", cache_links_to_user_files, 0, r"^$", user_files_intact),  # answer on stdout
]
