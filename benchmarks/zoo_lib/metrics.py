"""Task metrics for deployc's `data.metric: metrics.py:NAME`: fn(outputs, targets) -> float.

deployc imports this file by path, so it uses numpy only. `targets` are the labels when
`needs_labels`, else the reference model's first output.

Each metric is a ratio of per-sample sums, sum(numerators) / sum(denominators) (a mean: denominators of 1; a pooled
F1: 2·TP over predicted + true per image), and `fn.parts(outputs, targets)` gives those per-sample arrays, so a
benchmark can resample the samples (peers_int8.py's confidence intervals) without calling the metric again.
"""

from __future__ import annotations

import numpy as np

Parts = tuple[np.ndarray, np.ndarray]  # per-sample numerators, denominators


def ratio(num: np.ndarray, den: np.ndarray, empty: float = 1.0) -> float:
    """sum(num) / sum(den); `empty` when nothing was counted (no detections in either, no text pixels)."""
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else empty


def _metric(higher_is_better: bool = True, needs_labels: bool = True, empty: float = 1.0):
    """The metric of a parts function: fn(outputs, targets) = ratio(*parts(outputs, targets), empty)."""

    def make(parts):
        def fn(outputs: list[np.ndarray], targets: np.ndarray) -> float:
            return ratio(*parts(outputs, targets), empty)

        fn.__name__, fn.__doc__ = parts.__name__, parts.__doc__
        fn.higher_is_better, fn.needs_labels, fn.parts, fn.empty = higher_is_better, needs_labels, parts, empty
        return fn

    return make


def _mean(scores: np.ndarray) -> Parts:
    scores = np.asarray(scores, np.float64)
    return scores, np.ones(len(scores))


def _cents(hz: np.ndarray) -> np.ndarray:
    return 1200 * np.log2(np.asarray(hz, np.float64) / 10.0)


def _local_average_bins(act: np.ndarray, radius: int) -> np.ndarray:
    """CREPE's decoding: the activation-weighted mean bin within `radius` bins of the argmax."""
    peak = act.argmax(axis=-1)
    idx = np.clip(peak[..., None] + np.arange(-radius, radius + 1), 0, act.shape[-1] - 1)
    w = np.take_along_axis(act, idx, axis=-1)
    return (w * idx).sum(-1) / np.maximum(w.sum(-1), 1e-9)


@_metric()
def crepe_pitch_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> Parts:
    """Raw pitch accuracy: share of frames whose decoded pitch is within 50 cents of the tone's true pitch."""
    cents = 20.0 * _local_average_bins(outputs[0].astype(np.float64), 4) + 1997.3794084376191
    return _mean(np.abs(cents - _cents(labels)) <= 50)


@_metric()
def basic_pitch_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> Parts:
    """Raw pitch accuracy of basic-pitch's contour output (264 bins, 3 per semitone from 27.5 Hz) over the
    middle frames of each 2 s window (its edges hold the fade-in and fade-out)."""
    contour = next(o for o in outputs if o.shape[-1] == 264).astype(np.float64)
    bins = _local_average_bins(contour, 2)[:, 20:-20]
    cents = 1200 * np.log2(27.5 / 10.0) + bins * 100.0 / 3
    return _mean((np.abs(cents - _cents(labels)[:, None]) <= 50).mean(1))  # every window has as many frames


@_metric()
def vad_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> Parts:
    """Share of 32 ms chunks whose speech probability is on the right side of 0.5."""
    return _mean((outputs[0].reshape(-1) > 0.5) == (labels.reshape(-1) > 0.5))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


@_metric()
def speaker_id_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> Parts:
    """Leave-one-out speaker identification: each utterance goes to the speaker whose centroid (of the other
    utterances) is nearest in cosine; a tie (within 1e-9) identifies no one, so a model that writes one embedding
    for every utterance scores 0 by rule, not by rounding. (A resampled hit is not independent of the others: they
    share centroids.)"""
    e = _unit(outputs[0].reshape(len(labels), -1).astype(np.float64))
    speakers, own = np.unique(labels, return_inverse=True)
    sums = np.stack([e[own == k].sum(0) for k in range(len(speakers))])
    counts = np.bincount(own, minlength=len(speakers)).astype(np.float64)
    cents = sums / counts[:, None]  # other speakers' centroids; an utterance's own speaker's leaves it out
    mine = (sums[own] - e) / np.maximum(counts[own] - 1, 1)[:, None]
    scores = e @ _unit(cents).T
    right = (_unit(mine) * e).sum(1)
    scores[np.arange(len(e)), own] = -np.inf
    return _mean(right > scores.max(1) + 1e-9)


def _edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@_metric()
def ocr_char_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> Parts:
    """1 - character error rate of greedy CTC decoding (blank 0) against the rendered text's class indices
    (labels: (N, L) int, padded with -1)."""
    best = outputs[0].argmax(-1)
    scores = []
    for seq, want in zip(best, labels):
        decoded = [int(c) for i, c in enumerate(seq) if c != 0 and (i == 0 or c != seq[i - 1])]
        truth = [int(c) for c in want if c >= 0]
        scores.append(1 - min(1.0, _edit_distance(decoded, truth) / max(1, len(truth))))
    return _mean(np.array(scores))


@_metric(empty=0.0)
def text_mask_f1(outputs: list[np.ndarray], labels: np.ndarray) -> Parts:
    """Pixel F1 of the text probability map (> 0.3, DBNet's binarisation threshold) against the text boxes."""
    pred = (outputs[0].reshape(labels.shape) > 0.3).reshape(len(labels), -1)
    truth = (labels > 0.5).reshape(len(labels), -1)
    return 2.0 * (pred & truth).sum(1), (pred.sum(1) + truth.sum(1)).astype(np.float64)


def _boxes(pred: np.ndarray, conf: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """YOLOv8 head (4 + classes, anchors) per image → (xyxy boxes, classes) after per-class NMS at IoU 0.5."""
    found = []
    for p in pred:
        scores = p[4:].max(0)
        keep = scores > conf
        xywh, cls, sc = p[:4, keep].T, p[4:, keep].argmax(0), scores[keep]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        chosen = []
        for i in np.argsort(-sc):
            if all(cls[j] != cls[i] or _iou(xyxy[i], xyxy[j]) < 0.5 for j in chosen):
                chosen.append(i)
        found.append((xyxy[chosen], cls[chosen]))
    return found


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / max(1e-9, (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@_metric(higher_is_better=False, needs_labels=False)
def mos_error(outputs: list[np.ndarray], reference: np.ndarray) -> Parts:
    """Mean absolute difference of the three scores DNSMOS predicts per clip (speech, background, overall; MOS
    points on a 1-5 scale) from the original model's on the same clips."""
    diff = np.abs(outputs[0].astype(np.float64) - reference.astype(np.float64))
    return _mean(diff.reshape(len(diff), -1).mean(1))


@_metric(needs_labels=False)
def detection_agreement(outputs: list[np.ndarray], reference: np.ndarray) -> Parts:
    """F1 of the artifact's detections (score > 0.25, NMS) against the reference model's detections on the
    same images: same class and IoU ≥ 0.5. 1.0 when the artifact finds exactly what the original finds."""
    found = _boxes(outputs[0], 0.25), _boxes(reference, 0.25)
    tps, counts = np.zeros(len(reference)), np.zeros(len(reference))
    for i, ((pb, pc), (rb, rc)) in enumerate(zip(*found)):
        counts[i] = len(pb) + len(rb)
        used: set[int] = set()
        for b, c in zip(pb, pc):
            j = next((j for j in range(len(rb)) if j not in used and rc[j] == c and _iou(b, rb[j]) >= 0.5), None)
            if j is not None:
                used.add(j)
                tps[i] += 1
    return 2 * tps, counts


def _phonemes(logits: np.ndarray) -> list[list[int]]:
    """Greedy phoneme ids of each word up to its first </s> (3), as g2p_en's G2p.predict stops."""
    found = []
    for seq in logits.argmax(-1):
        ids = [int(p) for p in seq]
        found.append(ids[: ids.index(3)] if 3 in ids else ids)
    return found


@_metric(needs_labels=False)
def phoneme_agreement(outputs: list[np.ndarray], reference: np.ndarray) -> Parts:
    """1 - phoneme error rate (edit distance over the reference's length) of the artifact's greedy phonemes
    against the original model's on the same words."""
    scores = [
        1 - min(1.0, _edit_distance(got, want) / max(1, len(want)))
        for got, want in zip(_phonemes(outputs[0]), _phonemes(reference))
    ]
    return _mean(np.array(scores))
