"""Task metrics for deployc's `data.metric: metrics.py:NAME`: fn(outputs, targets) -> float.

deployc imports this file by path, so it uses numpy only. `targets` are the labels when
`needs_labels`, else the reference model's first output.
"""

from __future__ import annotations

import numpy as np


def _metric(higher_is_better: bool = True, needs_labels: bool = True):
    def mark(fn):
        fn.higher_is_better, fn.needs_labels = higher_is_better, needs_labels
        return fn

    return mark


def _cents(hz: np.ndarray) -> np.ndarray:
    return 1200 * np.log2(np.asarray(hz, np.float64) / 10.0)


def _local_average_bins(act: np.ndarray, radius: int) -> np.ndarray:
    """CREPE's decoding: the activation-weighted mean bin within `radius` bins of the argmax."""
    peak = act.argmax(axis=-1)
    idx = np.clip(peak[..., None] + np.arange(-radius, radius + 1), 0, act.shape[-1] - 1)
    w = np.take_along_axis(act, idx, axis=-1)
    return (w * idx).sum(-1) / np.maximum(w.sum(-1), 1e-9)


@_metric()
def crepe_pitch_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Raw pitch accuracy: share of frames whose decoded pitch is within 50 cents of the tone's true pitch."""
    cents = 20.0 * _local_average_bins(outputs[0].astype(np.float64), 4) + 1997.3794084376191
    return float((np.abs(cents - _cents(labels)) <= 50).mean())


@_metric()
def basic_pitch_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Raw pitch accuracy of basic-pitch's contour output (264 bins, 3 per semitone from 27.5 Hz) over the
    middle frames of each 2 s window (its edges hold the fade-in and fade-out)."""
    contour = next(o for o in outputs if o.shape[-1] == 264).astype(np.float64)
    bins = _local_average_bins(contour, 2)[:, 20:-20]
    cents = 1200 * np.log2(27.5 / 10.0) + bins * 100.0 / 3
    return float((np.abs(cents - _cents(labels)[:, None]) <= 50).mean())


@_metric()
def vad_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Share of 32 ms chunks whose speech probability is on the right side of 0.5."""
    return float(((outputs[0].reshape(-1) > 0.5) == (labels.reshape(-1) > 0.5)).mean())


@_metric()
def speaker_id_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Leave-one-out speaker identification: each utterance goes to the speaker whose centroid (of the other
    utterances) is nearest in cosine."""
    e = outputs[0].reshape(len(labels), -1).astype(np.float64)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    speakers = np.unique(labels)
    hits = 0
    for i in range(len(e)):
        keep = np.arange(len(e)) != i
        cents = np.stack([e[keep & (labels == s)].mean(0) for s in speakers])
        cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
        hits += speakers[np.argmax(cents @ e[i])] == labels[i]
    return hits / len(e)


def _edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@_metric()
def ocr_char_accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """1 - character error rate of greedy CTC decoding (blank 0) against the rendered text's class indices
    (labels: (N, L) int, padded with -1)."""
    best = outputs[0].argmax(-1)
    scores = []
    for seq, want in zip(best, labels):
        decoded = [int(c) for i, c in enumerate(seq) if c != 0 and (i == 0 or c != seq[i - 1])]
        truth = [int(c) for c in want if c >= 0]
        scores.append(1 - min(1.0, _edit_distance(decoded, truth) / max(1, len(truth))))
    return float(np.mean(scores))


@_metric()
def text_mask_f1(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Pixel F1 of the text probability map (> 0.3, DBNet's binarisation threshold) against the text boxes."""
    pred = outputs[0].reshape(labels.shape) > 0.3
    truth = labels > 0.5
    tp = float((pred & truth).sum())
    return 2 * tp / max(1.0, float(pred.sum() + truth.sum()))


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
def mos_error(outputs: list[np.ndarray], reference: np.ndarray) -> float:
    """Mean absolute difference of the three scores DNSMOS predicts per clip (speech, background, overall; MOS
    points on a 1-5 scale) from the original model's on the same clips."""
    return float(np.abs(outputs[0].astype(np.float64) - reference.astype(np.float64)).mean())


@_metric(needs_labels=False)
def detection_agreement(outputs: list[np.ndarray], reference: np.ndarray) -> float:
    """F1 of the artifact's detections (score > 0.25, NMS) against the reference model's detections on the
    same images: same class and IoU ≥ 0.5. 1.0 when the artifact finds exactly what the original finds."""
    tp = n_pred = n_ref = 0
    for (pb, pc), (rb, rc) in zip(_boxes(outputs[0], 0.25), _boxes(reference, 0.25)):
        n_pred, n_ref = n_pred + len(pb), n_ref + len(rb)
        used: set[int] = set()
        for b, c in zip(pb, pc):
            j = next((j for j in range(len(rb)) if j not in used and rc[j] == c and _iou(b, rb[j]) >= 0.5), None)
            if j is not None:
                used.add(j)
                tp += 1
    return 2 * tp / max(1, n_pred + n_ref) if n_pred + n_ref else 1.0


def _phonemes(logits: np.ndarray) -> list[list[int]]:
    """Greedy phoneme ids of each word up to its first </s> (3), as g2p_en's G2p.predict stops."""
    found = []
    for seq in logits.argmax(-1):
        ids = [int(p) for p in seq]
        found.append(ids[: ids.index(3)] if 3 in ids else ids)
    return found


@_metric(needs_labels=False)
def phoneme_agreement(outputs: list[np.ndarray], reference: np.ndarray) -> float:
    """1 - phoneme error rate (edit distance over the reference's length) of the artifact's greedy phonemes
    against the original model's on the same words."""
    scores = [
        1 - min(1.0, _edit_distance(got, want) / max(1, len(want)))
        for got, want in zip(_phonemes(outputs[0]), _phonemes(reference))
    ]
    return float(np.mean(scores))
