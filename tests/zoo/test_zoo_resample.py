"""The zoo metrics' per-sample parts give the metric itself, and peers_int8's paired bootstrap (zoo_lib/resample.py)
resamples them as calling the metric on each resampled set would."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from zoo_lib import metrics
from zoo_lib.resample import Resampler, flips, interval, mcnemar_p


def _speakers(rng: np.random.Generator, n_speakers: int = 6, per: int = 8, spread: float = 1.2):
    labels = np.repeat(np.arange(n_speakers), per)
    centres = rng.normal(0, 1, (n_speakers, 16))
    return centres[labels] + spread * rng.normal(0, 1, (len(labels), 16)), labels


def _leave_one_out(e: np.ndarray, labels: np.ndarray) -> float:
    """The definition, one utterance at a time: the nearest centroid (cosine) of the other utterances."""
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    hits = 0
    for i in range(len(e)):
        keep = np.arange(len(e)) != i
        cents = np.stack([e[keep & (labels == s)].mean(0) for s in np.unique(labels)])
        cents /= np.linalg.norm(cents, axis=1, keepdims=True)
        hits += np.unique(labels)[np.argmax(cents @ e[i])] == labels[i]
    return hits / len(e)


def test_speaker_id_accuracy_is_leave_one_out_and_a_constant_embedding_identifies_no_one():
    rng = np.random.default_rng(0)
    values = []
    for _ in range(5):
        e, labels = _speakers(rng)
        values.append(metrics.speaker_id_accuracy([e], labels))
        assert values[-1] == _leave_one_out(e, labels)
    assert min(values) > 0.2 and max(values) < 1.0  # neither trivial nor hopeless: the cases exercise both branches
    assert metrics.speaker_id_accuracy([np.ones((48, 16))], np.repeat(np.arange(6), 8)) == 0.0


def _tones(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random pitches, and CREPE activations that decode to them (one peak at each pitch's 20-cent bin)."""
    hz = np.exp(rng.uniform(np.log(50), np.log(1400), n))
    bins = np.clip(np.round((1200 * np.log2(hz / 10) - 1997.38) / 20).astype(int), 0, 359)
    act = np.full((n, 360), 1e-3)
    act[np.arange(n), bins] = 1.0
    return hz, act


def test_resampled_parts_equal_the_metric_called_on_each_resampled_set():
    rng = np.random.default_rng(1)
    hz, act = _tones(rng, 200)
    act[:12] = rng.random((12, 360))  # 12 frames decoded at random pitches
    sampler = Resampler(200, rounds=50, seed=3)
    fast = sampler.score(metrics.crepe_pitch_accuracy, [act], hz)
    slow = sampler.score(lambda o, t: metrics.crepe_pitch_accuracy(o, t), [act], hz)  # no parts: called per resample
    assert slow.per_sample is None and np.allclose(fast.resampled, slow.resampled, atol=1e-12)
    assert fast.value == metrics.crepe_pitch_accuracy([act], hz) and 0.93 < fast.value < 1.0


def test_paired_interval_and_flips_against_the_reference():
    rng = np.random.default_rng(2)
    hz, right = _tones(rng, 400)
    broken = right.copy()
    broken[:40] = np.roll(broken[:40], 30, axis=1)  # 40 frames 600 cents off
    sampler = Resampler(400, rounds=1000, seed=0)
    ref, same, worse = (sampler.score(metrics.crepe_pitch_accuracy, [a], hz) for a in (right, right.copy(), broken))
    assert interval(ref.resampled - same.resampled) == (0.0, 0.0)  # paired: identical graphs never differ
    low, high = interval(ref.resampled - worse.resampled)
    assert 0.05 < low < 0.1 < high < 0.15  # 40 of 400 frames lost: drift 0.1
    assert flips(worse, ref, higher_is_better=True) == (40, 0)
    assert mcnemar_p(40, 0) < 1e-9 and mcnemar_p(3, 3) == 1.0
