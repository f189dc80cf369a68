"""The one timing implementation: quartiles, the unstable mark, in-round ratios, interleaving and warm-up.
(No assert here depends on how fast anything runs.)"""

from __future__ import annotations

import pytest

from deployc.core.timing import Rounds, Stats, interleaved, measure, warm_up


def test_stats_are_median_and_quartiles():
    s = Stats.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.q1, s.q3, s.iqr, s.n) == (3.0, 2.0, 4.0, 2.0, 5)
    assert s.spread == pytest.approx(2 / 3) and s.unstable
    steady = Stats.of([10.0, 10.1, 10.2, 10.3])
    assert not steady.unstable and steady.to_json()["iqr"] == pytest.approx(0.15)
    assert Stats.of([4.0]).iqr == 0.0


def test_ratios_are_taken_within_each_round():
    # round 2 was slow for everyone (load): the ratio of the round medians stays 0.5 throughout
    rounds = Rounds(
        samples={"eager": (10.0, 40.0, 10.0), "int8": (5.0, 20.0, 5.0)},
        round_medians={"eager": (10.0, 40.0, 10.0), "int8": (5.0, 20.0, 5.0)},
        clock="wall",
        per_round=1,
        load_before=1.0,
        load_after=3.0,
    )
    assert rounds.ratio("int8", "eager") == Stats(0.5, 0.5, 0.5, 3)
    assert rounds.times["int8"].unstable  # its raw times moved with the load...
    assert not rounds.ratio("int8", "eager").unstable  # ...its ratio did not
    assert rounds.percentile("eager", 100) == 40.0
    assert rounds.to_json("eager")["ratios"]["int8"]["median"] == 0.5


def test_candidates_take_turns_and_every_call_is_counted():
    calls: list[str] = []
    cands = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    result = interleaved(cands, rounds=4, per_round=2, warmup=1, min_warmup_s=0.0)
    timed = calls[3:]  # after one warm-up call each
    assert (
        timed
        == ["a"] * 2
        + ["b"] * 2
        + ["c"] * 2
        + ["c"] * 2
        + ["b"] * 2
        + ["a"] * 2
        + ["a"] * 2
        + ["b"] * 2
        + ["c"] * 2
        + ["c"] * 2
        + ["b"] * 2
        + ["a"] * 2
    )
    assert all(len(v) == 8 for v in result.samples.values())
    assert all(len(v) == 4 for v in result.round_medians.values())


def test_warm_up_runs_at_least_the_calls_asked_for():
    count = [0]
    warm_up(lambda: count.__setitem__(0, count[0] + 1), calls=7)
    assert count[0] == 7
    assert measure(lambda: None, runs=9, warmup=2, clock="thread_cpu").n == 9
