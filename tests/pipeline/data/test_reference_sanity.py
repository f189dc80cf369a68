"""Issue 24: the reference is sane before anything runs, and a custom metric keeps its contract. A gate compared with
a broken reference (or scored by a broken metric) passes garbage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deployc.core.config import load_config
from deployc.core.state import ModelState, TensorSpec
from deployc.data.dataset import Dataset
from deployc.data.metrics import BUILTIN, get_metric
from deployc.data.reference import compute_reference
from deployc.data.sources import digits_arrays
from deployc.driver.build import build
from deployc.errors import UsageError
from tests.conftest import digits_config, write

SPECS = (TensorSpec("image", ("batch", 1, 8, 8)),)


@pytest.fixture(scope="module")
def digits_test() -> tuple[np.ndarray, np.ndarray]:
    x, y = digits_arrays("test")
    return x[:200], y[:200]


def _state(module: nn.Module) -> ModelState:
    return ModelState(module=module.eval(), inputs=SPECS, facts=frozenset({"torch"}))


def _metric_file(tmp_path: Path, body: str) -> dict:
    write(tmp_path / "m.py", body)
    return load_config(digits_config(data={"validation": "digits:test", "metric": "m.py:score"}), base_dir=tmp_path)


def test_metric_higher_is_better_must_be_a_bool(tmp_path: Path):
    """Example 6: higher_is_better = 'False' (a truthy string) turned an error metric into a score."""
    config = _metric_file(
        tmp_path,
        """
        import numpy as np
        def score(outputs, targets):
            return float(np.abs(outputs[0] - targets).mean())
        score.higher_is_better = 'False'
        score.needs_labels = False
        """,
    )
    with pytest.raises(UsageError) as err:
        get_metric(config)
    assert str(err.value) == (
        "data.metric: 'm.py:score' sets higher_is_better = 'False' (str); it must be True or False"
    )


def test_metric_higher_is_better_string_fails_the_build_before_work(tmp_path: Path):
    write(
        tmp_path / "m.py",
        """
        def score(outputs, targets):
            return 0.0
        score.higher_is_better = 'False'
        """,
    )
    config = digits_config(data={"validation": "digits:test", "metric": "m.py:score"})
    with pytest.raises(UsageError, match="higher_is_better = 'False'"):
        build(load_config(config, base_dir=tmp_path), out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_metric_returning_an_array_is_refused(tmp_path: Path, digits_model, digits_test):
    """Own case: a metric returning per-sample errors (a numpy array) was float()-ed or crashed mid-build."""
    config = _metric_file(
        tmp_path,
        """
        import numpy as np
        def score(outputs, labels):
            return (outputs[0].argmax(1) == labels).astype(float)
        """,
    )
    x, y = digits_test
    with pytest.raises(UsageError) as err:
        compute_reference(_state(digits_model), Dataset({"image": x}, y, "digits:test"), get_metric(config), 64)
    assert str(err.value) == (
        "data.metric: 'm.py:score' returned a ndarray of shape [200]; a metric returns one real number "
        "(reduce it, e.g. .mean())"
    )


def test_metric_returning_nan_is_refused(tmp_path: Path, digits_model, digits_test):
    """Own case: a metric that gives NaN on the reference (0/0) would make every drift NaN."""
    config = _metric_file(
        tmp_path,
        """
        import numpy as np
        def score(outputs, labels):
            hits = outputs[0].argmax(1) == labels
            return float(np.float64(hits.sum() - hits.sum()) / 0.0)
        """,
    )
    x, y = digits_test
    with np.errstate(invalid="ignore"), pytest.raises(UsageError, match=r"'m.py:score' is nan for the model as loaded"):
        compute_reference(_state(digits_model), Dataset({"image": x}, y, "digits:test"), get_metric(config), 64)


def test_metric_may_return_numpy_and_0d_numbers(tmp_path: Path, digits_model, digits_test):
    config = _metric_file(
        tmp_path,
        """
        import numpy as np
        def score(outputs, labels):
            return np.array((outputs[0].argmax(1) == labels).mean())
        score.higher_is_better = np.bool_(True)
        """,
    )
    x, y = digits_test
    ref = compute_reference(_state(digits_model), Dataset({"image": x}, y, "digits:test"), get_metric(config), 64)
    assert 0.95 < ref.value <= 1.0


def test_shuffled_labels_put_the_reference_at_chance(digits_model, digits_test):
    """Own case: labels shuffled against the samples. Every artifact scores chance too: drift ~0, every gate passes."""
    x, y = digits_test
    shuffled = np.random.default_rng(0).permutation(y)
    with pytest.raises(UsageError) as err:
        compute_reference(_state(digits_model), Dataset({"image": x}, shuffled, "digits:test"), BUILTIN["top1"], 64)
    text = str(err.value)
    assert text.startswith("data.validation (digits:test): the model as loaded scores top1 0.")
    assert "chance level (always guessing the most common label scores 0.1" in text
    assert "labels shuffled against the samples" in text and "data.skip_checks: [chance]" in text
    ok = compute_reference(
        _state(digits_model),
        Dataset({"image": x}, shuffled, "digits:test"),
        BUILTIN["top1"],
        64,
        skip_checks=frozenset({"chance"}),
    )
    assert ok.value < 0.2


def test_the_true_labels_pass_the_chance_check(digits_model, digits_test):
    x, y = digits_test
    assert (
        compute_reference(_state(digits_model), Dataset({"image": x}, y, "digits:test"), BUILTIN["top1"], 64).value
        > 0.95
    )


class _WithConstant(nn.Module):
    """A classifier that also returns a constant (e.g. a prior or an unused head)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.register_buffer("prior", torch.linspace(0, 1, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x), self.prior.expand(x.shape[0], 10)


def test_output_index_at_a_constant_output_is_refused(digits_model, digits_test):
    """Own case: data.output points at an output that ignores the input; any artifact returning it passes cosine."""
    x, y = digits_test
    state = _state(_WithConstant(digits_model))
    data = Dataset({"image": x}, y, "digits:test")
    with pytest.raises(UsageError) as err:
        compute_reference(state, data, BUILTIN["cosine"], 64, output=1)
    assert str(err.value).startswith(
        "data.validation (digits:test): output 'output_1' (data.output: 1), which data.metric 'cosine' reads, "
        "is the same for all 200 samples"
    )
    assert compute_reference(state, data, BUILTIN["cosine"], 64, output=0).value == pytest.approx(1.0)


def test_model_ignoring_its_input_is_refused(digits_test):
    """Own case: forgotten weights / a zeroed last layer: logits the same for every sample."""

    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            nn.init.zeros_(self.fc.weight)

        def forward(self, x):
            return self.fc(x.flatten(1))

    x, y = digits_test
    with pytest.raises(UsageError, match=r"output 'output_0', which data.metric 'cosine' reads, is the same for all"):
        compute_reference(_state(Dead()), Dataset({"image": x}, y, "digits:test"), BUILTIN["cosine"], 64)


def test_random_model_at_inference_is_refused(digits_model, digits_test):
    """Own case: dropout active in forward() (F.dropout(training=True)): no artifact can match one random run."""

    class Noisy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return nn.functional.dropout(self.inner(x), 0.2, training=True)

    x, y = digits_test
    with pytest.raises(UsageError, match=r"the model as loaded gives different outputs for the same samples"):
        compute_reference(_state(Noisy(digits_model)), Dataset({"image": x}, y, "digits:test"), BUILTIN["cosine"], 64)
