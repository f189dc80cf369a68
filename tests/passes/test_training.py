"""The shared training loop: LR schedules, augmentations for images / series / tokens, regularisers, and
an epoch hook that replaces parameters mid-training (structured gradual pruning)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deployc.data.dataset import Dataset
from deployc.data.sources import digits_arrays
from deployc.errors import UsageError
from deployc.examples.models import DigitsResNet
from deployc.passes.augment import build_augmenter
from deployc.passes.training import RANGE_LO, RANGE_STEPS, TrainConfig, fit, lr_factor


def factors(**kw) -> list[float]:
    cfg = TrainConfig(epochs=10, **kw)
    return [lr_factor(cfg, s, 10) for s in range(100)]


def test_lr_schedules_have_their_shapes():
    assert factors(schedule="constant") == [1.0] * 100
    step = factors(schedule="step", step_every=3, step_gamma=0.1)
    assert step[29] == 1.0 and step[30] == pytest.approx(0.1) and step[60] == pytest.approx(0.01)
    cos = factors(schedule="cosine")
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5, abs=0.02) and cos[-1] < 0.01
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    one = factors(schedule="onecycle")
    assert (
        one[0] == pytest.approx(0.04) and max(one) == pytest.approx(1.0, abs=0.01) and 25 <= one.index(max(one)) <= 32
    )
    cyc = factors(schedule="cyclic")
    assert cyc[0] == pytest.approx(0.1) and cyc[10] == pytest.approx(1.0) and cyc[20] == pytest.approx(0.1)
    warm = factors(schedule="constant", warmup_epochs=2)
    assert warm[0] == pytest.approx(0.05) and warm[19] == 1.0 and all(a < b for a, b in zip(warm[:19], warm[1:20]))


def test_lr_auto_range_test_picks_a_rate_and_restores_the_model():
    """lr: auto runs the range test from the current weights, then puts every weight and BN statistic back."""
    torch.manual_seed(0)
    module = DigitsResNet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x, y = digits_arrays("train")
    result = fit(module, Dataset({"image": x}, y, "digits:train"), TrainConfig(epochs=0, lr="auto"), None, ["image"])
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    lrs = [lr for lr, _ in result.lr_range]
    assert lrs == sorted(lrs) and lrs[0] == RANGE_LO and len(lrs) <= RANGE_STEPS
    lowest = min(result.lr_range, key=lambda point: point[1])
    assert result.lr == pytest.approx(lowest[0] / 10) and 1e-3 < result.lr < 1e-1
    assert lowest[1] < result.lr_range[0][1] - 0.5  # the loss fell on the way: the rate found trains
    assert result.lr_range[-1][1] > lowest[1] + 0.5  # and rose again past it: the picked rate is below the cliff


def augment(spec: dict, x: torch.Tensor, name: str | None = None, seed: int = 0) -> torch.Tensor:
    return build_augmenter([spec], seed)(x.clone(), name)


IMAGES = torch.from_numpy(digits_arrays("test")[0][:16])


@pytest.mark.parametrize(
    "spec",
    [
        {"rotate": {"degrees": 20}},
        {"scale": {"low": 0.8, "high": 1.2}},
        {"affine": {}},
        {"color_jitter": {"brightness": 0.3, "contrast": 0.3}},
    ],
)
def test_image_augmentations_change_each_image_differently(spec):
    out = augment(spec, IMAGES)
    assert out.shape == IMAGES.shape and out.dtype == IMAGES.dtype and torch.isfinite(out).all()
    change = (out - IMAGES).abs().flatten(1).mean(1)
    assert (change > 1e-3).all() and change.std() > 1e-4  # per-image randomness, not one transform per batch


def test_rotation_by_zero_and_scale_one_is_identity():
    out = augment({"affine": {"degrees": 0, "scale": [1.0, 1.0]}}, IMAGES)
    assert torch.allclose(out, IMAGES, atol=1e-5)


def test_series_augmentations():
    t = torch.linspace(0, 1, 50)
    series = torch.stack([t, t**2, torch.sin(6 * t)])[:, None].repeat(1, 2, 1)  # (3, 2, 50)
    warped = augment({"time_warp": {"strength": 0.5}}, series)
    assert warped.shape == series.shape
    assert torch.allclose(warped[..., 0], series[..., 0]) and torch.allclose(
        warped[..., -1], series[..., -1], atol=1e-5
    )
    assert (warped[0, 0, 1:] >= warped[0, 0, :-1] - 1e-6).all()  # a monotone series stays monotone
    assert not torch.allclose(warped, series, atol=1e-3)
    scaled = augment({"magnitude_scale": {"std": 0.2}}, series)
    ratio = scaled[:, :, 1:] / series[:, :, 1:]
    assert torch.allclose(
        ratio[..., 10:], ratio[..., 10:11].expand_as(ratio[..., 10:]), atol=1e-4
    )  # one factor per channel
    jittered = augment({"jitter": {"std": 0.1}}, series[:, 0])  # (N, T) works too
    assert 0.05 < float((jittered - series[:, 0]).std()) < 0.15
    assert torch.equal(augment({"jitter": {}}, IMAGES), IMAGES)  # images are not series


TOKENS = torch.tensor([[101, 5, 6, 7, 8, 9, 10, 102, 0, 0]] * 64)


def test_token_delete_keeps_order_and_padding():
    out = augment({"token_delete": {"p": 0.3}}, TOKENS)
    assert out.shape == TOKENS.shape and (out[:, 0] == 101).all()
    assert (out != TOKENS).any()
    for row in out.tolist():
        kept = [t for t in row if t != 0]
        assert row[: len(kept)] == kept  # no holes: padding only at the end
        it = iter(TOKENS[0].tolist())
        assert all(t in it for t in kept)  # a subsequence of the original, in order


def test_token_swap_permutes_within_each_row():
    out = augment({"token_swap": {"p": 0.5}}, TOKENS)
    assert (out != TOKENS).any() and (out[:, 0] == 101).all() and (out[:, 8:] == 0).all()
    for row in out.tolist():
        assert sorted(row) == sorted(TOKENS[0].tolist())
    assert torch.equal(augment({"token_swap": {}}, IMAGES), IMAGES)  # floats are not tokens


def test_inputs_option_restricts_an_augmentation():
    fn = build_augmenter([{"noise": {"std": 1.0, "inputs": ["image"]}}], 0)
    assert not torch.equal(fn(IMAGES.clone(), "image"), IMAGES)
    assert torch.equal(fn(IMAGES.clone(), "mask"), IMAGES)


def test_bad_augmentation_options_are_usage_errors():
    with pytest.raises(UsageError, match=r"augment\[0\]\.rotate: .*'angle'.*options: degrees"):
        build_augmenter([{"rotate": {"angle": 3}}], 0)
    with pytest.raises(UsageError, match=r"unknown augmentation 'jiter'.*did you mean 'jitter'"):
        build_augmenter([{"jiter": {}}], 0)


def _digits(n: int = 600) -> Dataset:
    x, y = digits_arrays("train")
    return Dataset({"image": x[:n]}, y[:n], "digits:train")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_learn(optimizer):
    model = _mlp()
    cfg = TrainConfig(
        epochs=4,
        batch_size=32,
        optimizer=optimizer,
        lr=0.1 if optimizer == "sgd" else 1e-2,
        weight_decay=1e-4,
        label_smoothing=0.1,
        dropout=0.2,
        augment=[{"noise": {"std": 0.02}}],
    )
    result = fit(model, _digits(), cfg, None, ["image"])
    assert result.history[-1]["loss"] < 0.7 * result.history[0]["loss"]
    assert result.history[-1]["holdout_metric"] > 0.8
    assert model[3].p == 0.2 and not model.training


def test_l1_penalty_shrinks_weights():
    norms = {}
    for l1 in (0.0, 1e-3):
        model = _mlp()
        fit(model, _digits(), TrainConfig(epochs=3, l1=l1, lr=5e-3), None, ["image"])
        norms[l1] = float(model[1].weight.detach().abs().sum())
    assert norms[1e-3] < 0.8 * norms[0.0]


def test_epoch_hook_may_replace_parameters():
    """A hook that shrinks a layer returns True: fit() rebuilds its optimizer and keeps training the new tensors."""
    model = _mlp()
    seen = []

    def shrink(epoch: int, module: nn.Module) -> bool:
        if epoch != 0:
            seen.append(module[1].weight.detach().clone())
            return False
        keep = torch.arange(16)
        with torch.no_grad():
            module[1] = nn.Linear(64, 16).requires_grad_()
            module[4] = nn.Linear(16, 10)
        seen.append(keep)
        return True

    result = fit(
        model, _digits(), TrainConfig(epochs=3, lr=5e-3, schedule="cosine"), None, ["image"], epoch_hook=shrink
    )
    assert model[1].out_features == 16 and len(result.history) == 3
    assert not torch.equal(seen[1], model[1].weight)  # the replacement layer trained in the last epoch
    assert result.history[-1]["lr"] < result.history[0]["lr"]  # the schedule resumed where it was
    assert np.isfinite([h["loss"] for h in result.history]).all()
