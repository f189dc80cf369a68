"""Small models and data for tests/pipeline/test_hostile.py (loaded by path as 'hostile_models.py:NAME')."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def mlp() -> nn.Module:
    return Mlp()


class NanOnSome(Mlp):
    """NaN for every sample whose first feature is below -0.23 (41% of a standard normal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.where(x[:, :1] < -0.23, torch.full_like(y, float("nan")), y)


def nan_on_some() -> nn.Module:
    return NanOnSome()


class Nested(Mlp):
    def forward(self, x: torch.Tensor) -> tuple:
        y = self.fc(x)
        return y, (y * 2, [y + 1])


def nested() -> nn.Module:
    return Nested()


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids).mean(1))


def embed() -> nn.Module:
    return Embed()


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 5)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = self.fc(y)
        if (y.sum() > 0).item():
            return y * 2
        return y


class Branchy(nn.Module):
    """Python control flow on a tensor value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Identity(), Gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def branchy() -> nn.Module:
    return Branchy()


def endless():
    """A data factory that never ends."""
    rng = np.random.default_rng(0)
    while True:
        yield {"x": rng.standard_normal((1, 8)).astype(np.float32)}, np.array([1])


def mixed_shapes():
    yield {"x": np.zeros((2, 8), np.float32)}, np.array([0, 1])
    yield {"x": np.zeros((2, 9), np.float32)}, np.array([0, 1])


def raises_midway():
    yield {"x": np.zeros((2, 8), np.float32)}, np.array([0, 1])
    raise OSError("sensor disconnected")


class Scaled(Mlp):
    """A second, scalar input (shape []): one value for the whole batch."""

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * s


def scaled() -> nn.Module:
    return Scaled()


def exits_midway():
    import sys

    yield {"x": np.zeros((2, 8), np.float32)}, np.array([0, 1])
    sys.exit(3)


def nan_metric(outputs, labels) -> float:
    return float("nan")


def nan_target() -> type:
    """A target whose artifact is the model with Relu(x)/Relu(x) multiplied in: NaN wherever x ≤ 0, on the real
    onnxruntime (how an fp16 Log(0) or a broken converter shows up)."""
    import onnx
    from onnx import helper
    from pydantic import BaseModel, ConfigDict

    from deployc.compiler.contracts import Artifact, Target
    from deployc.core.ort import session

    class NanOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class NanTarget(Target):
        name = "test.nan"
        Options = NanOptions
        requires_any = (frozenset({"onnx"}),)

        def lower(self, state, ctx):
            return state.onnx

        def emit(self, state, lowered, ctx, precision):
            proto = onnx.ModelProto()
            proto.CopyFrom(lowered)
            out = proto.graph.output[0].name
            proto.graph.node.extend(
                [
                    helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("Div", ["r", "r"], ["ratio"]),
                    helper.make_node("Mul", ["ratio", "pre"], [out]),
                ]
            )
            for node in proto.graph.node[:-3]:
                node.output[:] = ["pre" if o == out else o for o in node.output]
            path = ctx.work_dir / "nan" / "m.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save(proto, str(path))
            return Artifact(self.name, precision, path, "onnxruntime", "")

        def infer(self, artifact, batch):
            return session(str(artifact.path)).run(None, batch)

    return NanTarget
