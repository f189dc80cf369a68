"""The zoo's g2p model (benchmarks/zoo_lib/models.py:G2p) computes what g2p_en's numpy forward (g2p_en/g2p.py:
G2p.predict) computes: the same logits at every decoder step and the same greedy phonemes, on random weights of
the checkpoint's shapes and, when the wheel is cached or downloadable, on its checkpoint20.npz."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from zoo_lib import catalog, datasets, fetch  # noqa: E402
from zoo_lib.models import G2P_KEYS, G2p  # noqa: E402

WORDS = ["activationist", "deployc", "onnx", "quantization", "scan"]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _grucell(x, h, w_ih, w_hh, b_ih, b_hh):  # g2p_en/g2p.py G2p.grucell, as written there
    rzn_ih = np.matmul(x, w_ih.T) + b_ih
    rzn_hh = np.matmul(h, w_hh.T) + b_hh
    cut = rzn_ih.shape[-1] * 2 // 3
    rz = _sigmoid(rzn_ih[:, :cut] + rzn_hh[:, :cut])
    r, z = np.split(rz, 2, -1)
    n = np.tanh(rzn_ih[:, cut:] + r * rzn_hh[:, cut:])
    return (1 - z) * n + z * h


def _predict(v: dict, word: str, steps: int = 20) -> tuple[list[int], np.ndarray]:
    """G2p.predict's encoder and greedy decoder: (phoneme ids up to </s>, the logits of every step computed)."""
    ids = [datasets.GRAPHEMES.index(c) + 3 for c in word] + [2]
    x = v["enc_emb"][ids][None]
    h = np.zeros((1, v["enc_w_hh"].shape[1]), np.float32)
    for t in range(len(ids)):
        h = _grucell(x[:, t], h, v["enc_w_ih"], v["enc_w_hh"], v["enc_b_ih"], v["enc_b_hh"])
    dec, preds, logits = v["dec_emb"][[2]], [], []
    for _ in range(steps):
        h = _grucell(dec, h, v["dec_w_ih"], v["dec_w_hh"], v["dec_b_ih"], v["dec_b_hh"])
        step = np.matmul(h, v["fc_w"].T) + v["fc_b"]
        logits.append(step[0])
        pred = int(step.argmax())
        if pred == 3:
            break
        preds.append(pred)
        dec = v["dec_emb"][[pred]]
    return preds, np.stack(logits)


def _random_checkpoint() -> dict:
    module, rng = G2p(), np.random.default_rng(0)
    state = module.state_dict()
    return {name: rng.normal(0, 0.1, tuple(state[key].shape)).astype(np.float32) for name, key in G2P_KEYS.items()}


def _check(arrays: dict) -> None:
    module = G2p().eval()
    module.load_state_dict({key: torch.from_numpy(arrays[name]) for name, key in G2P_KEYS.items()})
    with torch.no_grad():
        logits = module(torch.from_numpy(datasets.g2p_ids(WORDS))).numpy()
    for word, got in zip(WORDS, logits):
        preds, want = _predict(arrays, word)
        np.testing.assert_allclose(got[: len(want)], want, rtol=1e-4, atol=1e-4)
        ids = list(got.argmax(-1))
        assert (ids[: ids.index(3)] if 3 in ids else ids) == preds


def test_g2p_module_matches_the_numpy_forward_on_random_weights():
    _check(_random_checkpoint())


def test_g2p_module_matches_the_numpy_forward_on_the_wheels_checkpoint(tmp_path: Path):
    cache = fetch.cache_dir(os.environ.get("DEPLOYC_ZOO_CACHE") or ROOT / ".zoo-cache")
    model = catalog.BY_NAME["g2p"]
    try:
        npz = fetch.member(model.requirement, model.files["weights"], cache)
    except fetch.RegistryUnavailable as exc:
        pytest.skip(f"package registry unreachable: {exc}")
    with np.load(npz, allow_pickle=False) as f:
        arrays = {k: f[k] for k in G2P_KEYS}
    _check(arrays)
    preds, _ = _predict(arrays, "activationist")  # g2p_en's README example of a word out of its dictionary
    assert len(preds) > 8
    converted = model.weights({"weights": npz}, tmp_path)["weights"]  # what the zoo hands deployc
    from safetensors.torch import load_file

    G2p().load_state_dict(load_file(str(converted)))
