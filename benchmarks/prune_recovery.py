"""Pruning recovery on the MobileNetV3-style digits model (depthwise, squeeze-excite, hardswish, concat):
prune.structured, then finetune, plain vs distilled from the model as loaded, at the default learning rate
(auto: a range test picks it) and at fixed alternatives. Every run goes through the passes themselves
(run_pass, with the Context a build gives them), same seeds for every row.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/prune_recovery.py [--ratio 0.5 | --target-macs 0.5]
        [--epochs 8] [--seeds 3] [--train-samples N] [--label-noise F] [--out prune_recovery.md]

The metric is top-1 on digits:test (data.validation; never trained on). --train-samples keeps the first N
training samples (recovery with little data); --label-noise replaces that fraction of the training labels with
random classes (the teacher, trained on clean labels, is not told). Prints markdown and writes it to --out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deployc.compiler.contracts import Context
from deployc.compiler.instruments import Instruments
from deployc.compiler.loader import initial_facts, load_model
from deployc.compiler.manager import run_pass
from deployc.core.config import load_config
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.passes.finetune import Finetune, FinetuneConfig
from deployc.passes.model_stats import validation_metric
from deployc.passes.prune import PruneStructured, StructuredConfig

CONFIG = {
    "name": "digits-mobilenetv3",
    "model": {
        "factory": "deployc.examples.digits_cnn:mobilenetv3",
        "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}],
    },
    "data": {"train": "digits:train", "validation": "digits:test", "metric": "top1"},
    "targets": {"onnx": {"precision": ["fp32"]}},
}
LRS: tuple[Any, ...] = ("auto", 1e-3, 3e-3, 1e-2)


def training_data(samples: int | None, noise: float) -> Dataset:
    x, y = digits_arrays("train")
    if samples:
        x, y = x[:samples], y[:samples]
    rng = np.random.default_rng(0)
    flip = rng.random(len(y)) < noise
    y = y.copy()
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return Dataset({"image": x}, y, "digits:train")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--ratio", type=float, default=None)
    how.add_argument("--target-macs", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-samples", type=int, default=None)
    ap.add_argument("--label-noise", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=Path("prune_recovery.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    prune_cfg = {"target_macs": args.target_macs} if args.target_macs else {"ratio": args.ratio or 0.5}

    config = load_config(CONFIG)
    loaded = load_model(config)
    loaded = loaded.replace(facts=loaded.facts | initial_facts(config))
    x_te, y_te = digits_arrays("test")
    train = training_data(args.train_samples, args.label_noise)
    ctx = Context(
        config=config,
        train=train,
        calibration=train,
        validation=Dataset({"image": x_te}, y_te, "digits:test"),
        work_dir=Path(tempfile.mkdtemp(prefix="prune-recovery-")),
        instruments=Instruments(quiet=True),
        loaded=loaded,  # what build.py sets: the teacher of distilled recovery
    )
    ref = validation_metric(loaded.module, loaded, ctx)
    pruned = run_pass(PruneStructured(StructuredConfig(measure_onnx=False, **prune_cfg)), loaded, ctx)
    p = pruned.history[-1].metrics
    after_prune = validation_metric(pruned.module, pruned, ctx)

    rows = []
    for teacher in ("none", "loaded"):
        for lr in LRS:
            scores, used, seconds = [], [], []
            for seed in range(args.seeds):
                cfg = FinetuneConfig(epochs=args.epochs, lr=lr, teacher=teacher, seed=seed)
                t0 = time.perf_counter()
                out = run_pass(Finetune(cfg), pruned, ctx)
                seconds.append(time.perf_counter() - t0)
                m = out.history[-1].metrics
                scores.append(m["metric_after"])
                used.append(m["lr"])
            drop = [(ref - s) * 100 for s in scores]
            rows.append(
                (
                    "plain" if teacher == "none" else "distilled (from the model as loaded)",
                    "auto (default)" if lr == "auto" else f"{lr:g}",
                    " / ".join(f"{u:.1e}" for u in used),
                    f"{statistics.mean(scores):.4f}",
                    f"{min(scores):.4f}–{max(scores):.4f}",
                    f"{statistics.mean(drop):+.2f}",
                    f"{sum(d <= 2.0 for d in drop)}/{len(drop)}",
                    f"{statistics.median(seconds):.1f}",
                )
            )
    data_note = f"{len(train)} training samples" + (
        f", {args.label_noise:.0%} labels randomised" if args.label_noise else ""
    )
    lines = [
        f"MobileNetV3-style digits model: {p['params_before']:,} params; prune.structured "
        f"{' '.join(f'{k}={v}' for k, v in prune_cfg.items())} → {p['params_after']:,} params, "
        f"MACs ×{p['macs_ratio']:.3f}; finetune {args.epochs} epochs, seeds 0–{args.seeds - 1}, {data_note}",
        "",
        f"top-1 on digits:test: as loaded **{ref:.4f}**, after pruning **{after_prune:.4f}**",
        "",
        "| recovery | lr setting | lr used (per seed) | top-1 mean | range | drop vs loaded (pts) | within 2 pts "
        "| s/run (median, incl. range test) |",
        "|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
