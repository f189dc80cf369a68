"""Which variants a sweep builds, in what order: every combination (grid), a seeded sample of them (random), or
Optuna's TPE sampler steered by the objective value of the variants built so far (tpe). Proposing is kept apart
from building and scoring: the executor asks for variants and tells back what each scored."""

from __future__ import annotations

import random
from typing import Any, Protocol

from deployc.errors import UsageError
from deployc.sweep.spec import MAX_VARIANTS, Sweep, Variant


class Search(Protocol):
    adaptive: bool  # whether later proposals depend on earlier results (ask in small batches then)

    def ask(self, n: int) -> list[Variant]:
        """Up to n variants not proposed before; [] when the search is over."""

    def tell(self, variant: Variant, value: float | None) -> None:
        """The objective value a variant reached (None: it failed or nothing qualified)."""


class FixedSearch:
    """grid and random: the whole list is known before anything runs."""

    adaptive = False

    def __init__(self, variants: list[Variant]):
        self.pending = list(variants)

    def ask(self, n: int) -> list[Variant]:
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def tell(self, variant: Variant, value: float | None) -> None:
        return None


class TpeSearch:
    """Optuna's TPE over the vary lists as categorical choices (an index per key: values may be lists or mappings)."""

    adaptive = True

    def __init__(self, sweep: Sweep, trials: int, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial otherwise
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, trials // 2)))
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        self.sweep, self.trials = sweep, trials
        self.proposed: dict[str, Any] = {}  # variant id -> its first trial
        self.values: dict[str, float | None] = {}
        self.open: dict[str, list[Any]] = {}  # variant id -> trials waiting for its value (repeats included)

    def ask(self, n: int) -> list[Variant]:
        out: list[Variant] = []
        asks = 0
        while len(out) < n and len(self.proposed) < min(self.trials, self.sweep.size) and asks < 20 * self.trials:
            asks += 1
            trial = self.study.ask()
            overrides = {
                key: values[trial.suggest_categorical(key, list(range(len(values))))]
                for key, values in self.sweep.config.vary.items()
            }
            variant = self.sweep.variant(overrides)
            if variant.id in self.values:  # a repeat of a finished variant: its value, without building it again
                self._finish(trial, self.values[variant.id])
            elif variant.id in self.proposed:
                self.open[variant.id].append(trial)
            else:
                self.proposed[variant.id] = trial
                self.open[variant.id] = [trial]
                out.append(variant)
        return out

    def tell(self, variant: Variant, value: float | None) -> None:
        self.values[variant.id] = value
        for trial in self.open.pop(variant.id, []):
            self._finish(trial, value)

    def _finish(self, trial: Any, value: float | None) -> None:
        from optuna.trial import TrialState

        if value is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, value)


def make_search(sweep: Sweep) -> Search:
    """The search a sweep file asks for; a space past MAX_VARIANTS is refused unless `trials` bounds it (no
    combination is listed to find out: sweep.size is a product of list lengths)."""
    cfg = sweep.config.search
    if sweep.size > MAX_VARIANTS and (cfg.method == "grid" or cfg.trials is None):
        hint = "use search: {method: random or tpe, trials: N}" if cfg.method == "grid" else "set search.trials"
        raise UsageError(
            f"{sweep.path}: vary makes {sweep.size:,} combinations; a sweep builds at most {MAX_VARIANTS:,} "
            f"variants: narrow vary, or {hint}"
        )
    if cfg.method == "tpe":
        return TpeSearch(sweep, cfg.trials or sweep.size, cfg.seed)
    if cfg.method == "random":
        picked = sorted(random.Random(cfg.seed).sample(range(sweep.size), min(cfg.trials or sweep.size, sweep.size)))
        return FixedSearch([sweep.variant(sweep.combination(i)) for i in picked])
    return FixedSearch([sweep.variant(sweep.combination(i)) for i in range(sweep.size)])
