"""The same recovery fine-tune of a structurally pruned digits model (prune.structured to 25% of the MACs)
under alternative LR schedules, augmentations, regularizers and optimizers: epochs to converge, final metric.

    .venv/bin/python benchmarks/finetune_sweep.py [--epochs 8] [--target-macs 0.25] [--out finetune_sweep.md]

Everything else is the base recipe (Adam, lr 3e-3, cosine, batch 64, no augmentation, no regularizer).
Digits:test top-1 is measured after every epoch (an epoch hook; it never steers training).
"Epochs to converge": first epoch within 1 point of the run's best test top-1 (its plateau);
"epochs to ≤ 2 pts": first epoch within 2 points of the unpruned model (the recovery budget).
Prints markdown and writes it to --out.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.examples.digits_cnn import accuracy, pretrained
from deployc.passes.prune import StructuredConfig, prune_channels
from deployc.passes.training import TrainConfig, fit

BASE: dict[str, Any] = {"optimizer": "adam", "lr": 3e-3, "schedule": "cosine"}

SWEEPS: dict[str, dict[str, dict[str, Any]]] = {
    "LR schedule": {
        "constant": {"schedule": "constant"},
        "step (÷10 every 3 epochs)": {"schedule": "step", "step_every": 3},
        "cosine": {},
        "cosine + 1 epoch warm-up": {"warmup_epochs": 1},
        "cyclic (triangular, 2 epochs)": {"schedule": "cyclic"},
        "one-cycle": {"schedule": "onecycle"},
    },
    "Augmentation": {
        "none": {},
        "shift ±1 px": {"augment": [{"shift": {"pixels": 1}}]},
        "rotate ±15°": {"augment": [{"rotate": {"degrees": 15}}]},
        "scale 0.9–1.1": {"augment": [{"scale": {}}]},
        "brightness/contrast jitter": {"augment": [{"color_jitter": {}}]},
        "gaussian noise σ=0.05": {"augment": [{"noise": {}}]},
        "shift + rotate + jitter": {
            "augment": [{"shift": {"pixels": 1}}, {"rotate": {"degrees": 10}}, {"color_jitter": {}}]
        },
    },
    "Regularizer": {
        "none": {},
        "L2 weight decay 1e-4 (adam)": {"weight_decay": 1e-4},
        "decoupled weight decay 1e-2 (adamw)": {"optimizer": "adamw", "weight_decay": 1e-2},
        "L1 1e-5": {"l1": 1e-5},
        "label smoothing 0.1": {"label_smoothing": 0.1},
    },
    "Optimizer": {
        "SGD momentum 0.9, lr 0.05": {"optimizer": "sgd", "lr": 0.05},
        "Adam lr 3e-3": {},
        "AdamW lr 3e-3": {"optimizer": "adamw"},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--target-macs", type=float, default=0.25)
    ap.add_argument("--out", type=Path, default=Path("finetune_sweep.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = pretrained()
    state = ModelState(module=model, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),))
    pruned = copy.deepcopy(model)
    prune_channels(pruned, state, None, StructuredConfig(target_macs=args.target_macs))
    x, y = digits_arrays("train")
    train = Dataset({"image": x}, y, "digits:train")
    ref = accuracy(model)
    lines = [
        f"Recovery fine-tune of DigitsResNet after prune.structured{{target_macs={args.target_macs}}}: unpruned "
        f"test top-1 {ref:.4f}, pruned before fine-tuning {accuracy(pruned):.4f}; {args.epochs} epochs each, "
        "batch 64, one thread.",
        "",
    ]
    for title, variants in SWEEPS.items():
        lines += [
            f"### {title}",
            "",
            "| variant | epochs to converge | epochs to ≤ 2 pts | test top-1 per epoch | final test top-1 | "
            "Δ vs unpruned (pts) | best holdout top-1 | seconds |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, overrides in variants.items():
            cfg = TrainConfig(**{**BASE, "epochs": args.epochs, **overrides})
            tuned = copy.deepcopy(pruned)
            curve: list[float] = []
            t0 = time.perf_counter()
            result = fit(
                tuned,
                train,
                cfg,
                None,
                ["image"],
                epoch_hook=lambda e, m, curve=curve: curve.append(accuracy(m.eval())),
            )
            seconds = time.perf_counter() - t0
            plateau = next(i + 1 for i, a in enumerate(curve) if a >= max(curve) - 0.01)
            recovered = next((str(i + 1) for i, a in enumerate(curve) if a >= ref - 0.02), f"> {args.epochs}")
            lines.append(
                f"| {name} | {plateau} | {recovered} | {' '.join(f'{a:.3f}' for a in curve)} | "
                f"{curve[-1]:.4f} | {(curve[-1] - ref) * 100:+.2f} | "
                f"{max(h['holdout_metric'] for h in result.history):.4f} | {seconds:.1f} |"
            )
            print(lines[-1], flush=True)
        lines.append("")
    text = "\n".join(lines)
    print("\n" + text)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
