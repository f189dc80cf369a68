"""The driver-neutral parts of a sweep, without Ray: dotted overrides, variant ids, the search order (grid,
seeded random, Optuna TPE), which variants share a prefix, the Pareto front and the objective's choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployc.errors import UsageError
from deployc.outputs.report_html import pareto_front
from deployc.sweep.plan import plan_prefixes
from deployc.sweep.results import check_variant, choose, pareto
from deployc.sweep.search import TpeSearch, make_search
from deployc.sweep.spec import ObjectiveConfig, load_sweep, set_key, variant_id
from tests.conftest import digits_config, write

BASE = {
    "passes": [{"prune.structured": None}, {"finetune": {"epochs": 1}}],
    "targets": {"onnx": {"precision": ["fp32"]}},
}


def test_set_key_follows_dotted_pass_names_and_list_indexes():
    out = set_key(BASE, "passes[0].prune.structured.ratio", 0.3, "w")
    assert out["passes"][0] == {"prune.structured": {"ratio": 0.3}}
    assert set_key(BASE, "passes[1].finetune.epochs", 3, "w")["passes"][1] == {"finetune": {"epochs": 3}}
    assert set_key(BASE, "quantize.calibration", "entropy", "w")["quantize"] == {"calibration": "entropy"}
    assert set_key(BASE, "targets.onnx.precision", ["int8"], "w")["targets"] == {"onnx": {"precision": ["int8"]}}
    assert BASE["passes"][0] == {"prune.structured": None}  # the base is never changed


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("passes[0].finetune.lr", "passes[0] is ['prune.structured']; it has no 'finetune'"),
        ("passes[4].finetune.lr", "passes has 2 entries, so [4] names nothing"),
        ("targets.onnx.precision[0].x", "targets.onnx.precision[0] is not a mapping"),
        ("passes.x", "passes is not a mapping"),
        ("a..b", "is not a dotted key"),
    ],
)
def test_set_key_errors_name_the_key(key: str, message: str):
    with pytest.raises(UsageError, match=r"^sweep\.yaml: vary\.") as err:
        set_key(BASE, key, 1, f"sweep.yaml: vary.{key}")
    assert message in str(err.value)


def test_variant_ids_are_readable_stable_and_distinct():
    a = variant_id({"passes[0].prune.structured.ratio": 0.3, "targets.onnx.precision": ["int8"]})
    assert a == variant_id({"passes[0].prune.structured.ratio": 0.3, "targets.onnx.precision": ["int8"]})
    assert a.startswith("ratio=0.3_precision=int8-")
    assert a != variant_id({"passes[0].prune.structured.ratio": 0.3, "targets.onnx.precision": ["fp32"]})
    weird = variant_id({"model.factory": "../x y.py:make"})
    assert "/" not in weird and " " not in weird


def sweep_file(tmp_path: Path, vary: dict, **extra: object) -> Path:
    write(tmp_path / "base.yaml", json.dumps(digits_config(passes=[{"prune.structured": {"ratio": 0.5}}])))
    return write(tmp_path / "sweep.yaml", json.dumps({"base": "base.yaml", "vary": vary, **extra}))


def test_grid_random_and_tpe_orders(tmp_path: Path):
    vary = {"passes[0].prune.structured.ratio": [0.2, 0.4, 0.6], "targets.onnx.precision": [["fp32"], ["int8"]]}
    grid = make_search(load_sweep(sweep_file(tmp_path, vary))).ask(100)
    assert [v.overrides["passes[0].prune.structured.ratio"] for v in grid] == [0.2, 0.2, 0.4, 0.4, 0.6, 0.6]
    assert len({v.id for v in grid}) == 6
    random = load_sweep(sweep_file(tmp_path, vary, search={"method": "random", "trials": 3, "seed": 7}))
    picked = [v.id for v in make_search(random).ask(100)]
    assert len(set(picked)) == 3 and picked == [v.id for v in make_search(random).ask(100)]
    assert set(picked) <= {v.id for v in grid}

    tpe = TpeSearch(load_sweep(sweep_file(tmp_path, vary)), trials=5, seed=0)
    seen = []
    while batch := tpe.ask(2):
        for v in batch:  # a made-up objective: smaller ratio is better, int8 halves it
            ratio = v.overrides["passes[0].prune.structured.ratio"]
            tpe.tell(v, ratio / (2 if v.overrides["targets.onnx.precision"] == ["int8"] else 1))
        seen += [v.id for v in batch]
    assert len(seen) == len(set(seen)) == 5
    assert len(tpe.study.trials) >= 5 and tpe.study.best_value == min(tpe.values.values())


def test_sweep_file_errors_exit_2_naming_the_file(tmp_path: Path):
    path = sweep_file(tmp_path, {"targets.onnx.precision": []})
    with pytest.raises(UsageError, match=r"sweep\.yaml: vary: .*'targets.onnx.precision' has no values"):
        load_sweep(path)
    write(path, json.dumps({"base": "base.yaml", "vary": {"targets.onnx.precision": [["int8"], ["int8"]]}}))
    with pytest.raises(UsageError, match=r'lists \["int8"\] twice'):
        load_sweep(path)
    write(path, json.dumps({"base": "missing.yaml", "vary": {"name": ["a"]}}))
    with pytest.raises(UsageError, match=r"sweep\.yaml: base: base config '.*missing\.yaml' not found"):
        load_sweep(path)
    write(path, json.dumps({"base": "base.yaml", "vary": {"name": ["a"]}, "search": {"trials": 3}}))
    with pytest.raises(UsageError, match="grid builds every combination"):
        load_sweep(path)
    write(path, json.dumps({"base": "base.yaml", "vary": {"passes[0].prune.structured.ratoi": [0.2]}}))
    sweep = load_sweep(path)
    with pytest.raises(UsageError, match=r"variant ratoi=0.2-\w+ .*ratoi: unknown key \(did you mean 'ratio'\?\)"):
        check_variant(sweep, sweep.variant({"passes[0].prune.structured.ratoi": 0.2}))


def plan(tmp_path: Path, vary: dict, passes: list) -> tuple[list, dict]:
    write(tmp_path / "base.yaml", json.dumps(digits_config(passes=passes)))
    write(tmp_path / "sweep.yaml", json.dumps({"base": "base.yaml", "vary": vary}))
    sweep = load_sweep(tmp_path / "sweep.yaml")
    checked = [check_variant(sweep, v) for v in make_search(sweep).ask(100)]
    nodes = plan_prefixes(checked, {})
    return nodes, {p.variant.id: p for p in checked}


def test_prefixes_form_a_tree_and_stop_at_the_first_cacheable_pass(tmp_path: Path):
    passes = [{"prune.structured": {"ratio": 0.5}}, {"finetune": {"epochs": 1}}, {"export.onnx": {}}]
    vary = {"passes[1].finetune.epochs": [1, 2], "targets.onnx.precision": [["fp32"], ["int8"]]}
    nodes, _ = plan(tmp_path, vary, passes)
    root, *children = nodes
    assert (root.passes, root.members, root.label) == (1, [], "prune.structured{ratio=0.5}")
    assert [(c.passes, c.parent, len(c.members)) for c in children] == [(2, root.key, 2), (2, root.key, 2)]

    # variants that differ only after the torch passes share all of them in one node
    nodes, _ = plan(tmp_path, {"targets.onnx.precision": [["fp32"], ["int8"]]}, passes)
    assert [(n.passes, len(n.members)) for n in nodes] == [(2, 2)]
    # nothing shared: no node
    nodes, _ = plan(tmp_path, {"passes[0].prune.structured.ratio": [0.2, 0.4]}, passes)
    assert nodes == []


def test_prefix_sharing_follows_the_config_sections_passes_read(tmp_path: Path):
    passes = [{"prune.structured": {"ratio": 0.5}}]
    nodes, _ = plan(tmp_path, {"quantize.calibration": ["minmax", "percentile"]}, passes)
    assert len(nodes) == 1  # pruning does not read `quantize`: both calibrations start from one pruned model
    nodes, _ = plan(tmp_path, {"quantize.per_channel": [True, False]}, [{"qat": {"epochs": 1}}])
    assert nodes == []  # qat reads quantize.per_channel: its results differ


def variants_with(artifacts: list[tuple[str, str, float, float, int, float, str]]) -> list[dict]:
    out: dict[str, dict] = {}
    for vid, precision, metric, drift, size, ms, gate in artifacts:
        v = out.setdefault(vid, {"id": vid, "status": "passed", "artifacts": []})
        v["artifacts"].append(
            {
                "target": "onnx",
                "precision": precision,
                "metric": metric,
                "drift": drift,
                "bytes": size,
                "latency_ms": ms,
                "gate": gate,
            }
        )
        if gate != "pass":
            v["status"] = "failed"
    return list(out.values())


def test_pareto_is_over_metric_latency_and_size_and_the_objective_picks_within_constraints():
    variants = variants_with(
        [
            ("a", "fp32", 0.99, 0.0, 1000, 1.0, "pass"),
            ("a", "int8", 0.98, 0.01, 300, 0.5, "pass"),
            ("b", "fp32", 0.97, 0.02, 600, 0.9, "pass"),  # dominated by a/int8 on all three
            ("b", "int8", 0.90, 0.09, 250, 0.2, "fail"),  # fastest and smallest, but its gate failed
            ("c", "fp32", 0.95, 0.04, 200, 0.8, "pass"),  # smallest passing: on the front
        ]
    )
    front = [(p["variant"], p["precision"]) for p in pareto(variants, higher_is_better=True)]
    assert front == [("a", "int8"), ("c", "fp32"), ("a", "fp32")]
    fastest = choose(variants, ObjectiveConfig())
    assert (fastest["variant"], fastest["precision"]) == ("a", "int8")
    smallest = choose(variants, ObjectiveConfig(minimize="bytes"))
    assert (smallest["variant"], smallest["precision"]) == ("c", "fp32")
    # b/fp32 passes its own gate, but b has a failed gate: only own_gate lets it compete
    only_b = [v for v in variants if v["id"] == "b"]
    assert choose(only_b, ObjectiveConfig()) is None
    assert choose(only_b, ObjectiveConfig(subject_to="own_gate"))["precision"] == "fp32"
    assert choose(variants, ObjectiveConfig(artifact="onnx/fp32", minimize="drift"))["variant"] == "a"


def test_pareto_front_with_one_cost_is_the_two_dimensional_front():
    pts = [{"metric": m, "ms": ms} for m, ms in [(0.9, 1.0), (0.8, 2.0), (0.95, 3.0), (0.95, 2.5)]]
    assert [(p["metric"], p["ms"]) for p in pareto_front(pts, "ms")] == [(0.9, 1.0), (0.95, 2.5)]
    assert [(p["metric"], p["ms"]) for p in pareto_front(pts, ("ms",), higher_is_better=False)] == [
        (0.9, 1.0),
        (0.8, 2.0),
    ]
