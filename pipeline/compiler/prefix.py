"""A pass prefix: the state after the first passes of a pipeline, with the random-number state they left behind,
so a build can continue from it exactly as if it had run those passes itself (a sweep runs a shared prune +
fine-tune once and hands the result to every variant that starts with it)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from deployc.core.state import ModelState
from deployc.errors import PipelineError


@dataclass(frozen=True)
class PassPrefix:
    state: ModelState  # its history names the passes already run
    rng: dict[str, Any]  # torch, numpy and random global states after those passes

    @property
    def passes(self) -> int:
        return len(self.state.history)


def capture(state: ModelState) -> PassPrefix:
    import torch

    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    return PassPrefix(state, rng)


def resume(prefix: PassPrefix, planned: list[Any], loaded: ModelState) -> ModelState:
    """The prefix's state, after checking it is the start of this pipeline; restores the RNG states it left."""
    import torch

    done = [(r.name, r.config) for r in prefix.state.history]
    wanted = [(p.cls.name, p.config.model_dump(mode="json")) for p in planned[: len(done)]]
    if done != wanted or prefix.state.inputs != loaded.inputs:
        ran = " | ".join(name for name, _ in done) or "nothing"
        raise PipelineError(f"the precomputed prefix ({ran}) is not the start of this pipeline")
    torch.set_rng_state(prefix.rng["torch"])
    np.random.set_state(prefix.rng["numpy"])
    random.setstate(prefix.rng["random"])
    return prefix.state
