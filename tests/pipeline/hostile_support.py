"""What the rows of tests/pipeline/test_hostile.py share: the CLI runner, a small model config and its data,
ONNX graphs made with onnx.helper, and out dirs set up the way a user leaves them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODELS = Path(__file__).with_name("hostile_models.py")


@dataclass
class Env:
    tmp: Path
    mp: pytest.MonkeyPatch
    _cli: Callable[[list[str]], tuple[int, str, str]]
    code: int = -1
    err: str = ""
    stdout: str = ""
    out_existed: bool = False  # the row made the out dir itself (its refusal must leave it as it was)
    out_name: str = "out"
    fixture: Callable[[str], Any] | None = None  # pytest's getfixturevalue: session fixtures a row needs
    command: str = ""  # the last command run (for the table of rows)

    @property
    def out(self) -> Path:
        return self.tmp / self.out_name

    def cli(self, *argv: Any) -> int:
        self.command = str(argv[0])
        self.code, self.err, self.stdout = self._cli([str(a) for a in argv])
        return self.code

    def build(self, cfg: dict | str, *flags: Any) -> int:
        return self.cli("build", write_config(self.tmp, cfg), "--out", self.out, *flags)

    def validate(self, cfg: dict | str) -> int:
        return self.cli("validate-config", write_config(self.tmp, cfg))


def data_npz(folder: Path, n: int = 64, labels: Any = None, name: str = "data.npz", **arrays: Any) -> Path:
    rng = np.random.default_rng(0)
    arrays.setdefault("x", rng.standard_normal((n, 8)).astype(np.float32))
    if isinstance(labels, str) and labels.startswith("model:"):
        labels = None
    arrays["labels"] = rng.integers(0, 5, n) if labels is None else labels
    if arrays["labels"] is False:
        del arrays["labels"]
    np.savez(folder / name, **arrays)
    return folder / name


def config(folder: Path, model: str = "mlp", **sections: Any) -> dict:
    cfg = {
        "name": "h",
        "model": {"factory": f"{MODELS}:{model}", "inputs": [{"name": "x", "shape": ["batch", 8]}]},
        "data": {"validation": "data.npz", "metric": "top1"},
        "targets": {"onnx": {"precision": ["fp32"]}},
        "validate": {"latency_runs": 1},
        "base_dir": str(folder),
    }
    cfg.update(sections)
    return cfg


def write_config(folder: Path, cfg: dict | str, name: str = "c.yaml") -> Path:
    path = folder / name
    if isinstance(cfg, dict):
        cfg = json.dumps({k: v for k, v in cfg.items() if k != "base_dir"})
    path.write_text(cfg)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ok_build(env: Env, **sections: Any) -> None:
    data_npz(env.tmp)
    env.build(config(env.tmp, **sections))


def _built_out(env: Env) -> None:
    """A previous good build into env.out (deployc's own out dir)."""
    ok_build(env)
    assert env.code == 0, env.err
    env.out_existed = True


def symlinked(name: str) -> Callable[[Env], None]:
    """A fresh out dir holding only a link named `name` to a file of the user's."""

    def run(env: Env) -> None:
        env.out.mkdir()
        env.out_existed = True
        (env.tmp / "victim.txt").write_text("precious")
        (env.out / name).symlink_to(env.tmp / "victim.txt")
        data_npz(env.tmp)
        env.build(config(env.tmp))

    return run


def victim_intact(env: Env) -> None:
    assert (env.tmp / "victim.txt").read_text() == "precious"


def onnx_model(env: Env, name: str = "m.onnx", **kw: Any) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = kw.get("nodes") or [helper.make_node("Relu", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(kw.get("input", "x"), TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        kw.get("initializers", []),
    )
    opsets = [helper.make_opsetid("", kw.get("opset", 17))] + kw.get("opsets", [])
    path = env.tmp / name
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def onnx_cfg(env: Env, path: Path, **model: Any) -> dict:
    if not (env.tmp / "data.npz").exists():
        data_npz(env.tmp)
    cfg = config(env.tmp, data={"validation": "data.npz", "metric": "cosine"})
    cfg["model"] = {"onnx": str(path), **model}
    return cfg


def vc(mutate: Callable[[Env, dict], None]) -> Callable[[Env], None]:
    """A validate-config row: the good config changed by `mutate`."""

    def run(env: Env) -> None:
        data_npz(env.tmp)
        cfg = config(env.tmp)
        mutate(env, cfg)
        env.validate(cfg)

    return run


def out_untouched(env: Env) -> None:
    """The out dir holds exactly what it held before the refused build (env.before)."""
    assert snapshot(env.out) == env.before
