"""A one-block BERT-style encoder built in the tests (embeddings → LayerNorm → attention with an additive
float32-min mask → residual LayerNorm → GELU FFN → LayerNorm → masked mean), with BERT's outlier channels:
a few LayerNorm scale entries 20× the rest (read by weights 20× smaller), so per-tensor int8 of the activations
they feed loses the other channels."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deployc.data.dataset import Dataset

VOCAB, SEQ, DIM, HEADS, FF = 64, 16, 32, 2, 64


class TinyBert(nn.Module):
    def __init__(self, seed: int = 0, pre_norm_head: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, DIM)
        self.ln0, self.ln1, self.ln2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(DIM, FF), nn.Linear(FF, DIM)
        # pre_norm_head: a LayerNorm read only by a Linear (the fold-into-LayerNorm case of smoothing)
        self.head_ln, self.head = (nn.LayerNorm(DIM), nn.Linear(DIM, 8)) if pre_norm_head else (None, None)
        with torch.no_grad():  # as trained BERTs have them: large activations meet small weights
            for ln in (self.ln0, self.ln1):
                ln.weight[:2] *= 20.0
            for linear in (self.q, self.k, self.v, self.ff1):
                linear.weight[:, :2] /= 20.0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.ln0(self.embed(input_ids))
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, HEADS, DIM // HEADS).transpose(1, 2)

        bias = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        scores = heads(self.q(x)) @ heads(self.k(x)).transpose(-1, -2) / math.sqrt(DIM // HEADS) + bias
        context = (scores.softmax(-1) @ heads(self.v(x))).transpose(1, 2).reshape(b, t, DIM)
        x = self.ln1(x + self.o(context))
        x = self.ln2(x + self.ff2(F.gelu(self.ff1(x))))
        if self.head is not None:
            x = self.head(self.head_ln(x))
        mask = attention_mask[..., None].float()
        return (x * mask).sum(1) / mask.sum(1)


def token_arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, (n, SEQ)).astype(np.int64)
    mask = (np.arange(SEQ)[None, :] < rng.integers(4, SEQ + 1, (n, 1))).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


def token_dataset(n: int, seed: int = 0) -> Dataset:
    return Dataset(token_arrays(n, seed), None, "tokens")


def cosine_drift(ref: np.ndarray, got: np.ndarray) -> float:
    """1 − mean per-sample cosine similarity."""
    a, b = ref.reshape(len(ref), -1).astype(np.float64), got.reshape(len(got), -1).astype(np.float64)
    return float(1 - np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
