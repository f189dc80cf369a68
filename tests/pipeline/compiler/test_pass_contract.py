"""The pass contract (onnx-ir style): PassResult, postconditions checked after every pass, errors that name the
pass and the passes before it, deterministic metrics apart from wall-clock timings, plugins from entry points."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from deployc.cli import main
from deployc.compiler import registry
from deployc.compiler.contracts import Artifact, Context, Pass, PassResult, Target
from deployc.compiler.instruments import Instruments
from deployc.compiler.manager import run_pass
from deployc.core.config import load_config
from deployc.core.state import ModelState, PassRecord, Table, TensorSpec
from deployc.driver.build import build
from deployc.errors import InvalidGraphError, PassError
from tests.conftest import digits_config


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    measure_latency: bool = True  # a real config key whose name looks like a timing: it must reach the manifest


def _pass(name: str, body, produces: frozenset[str] = frozenset(), invalidates: frozenset[str] = frozenset()):
    return type(
        f"Pass_{name.replace('.', '_')}",
        (Pass,),
        {
            "name": name,
            "Config": Options,
            "requires": frozenset({"torch"}),
            "produces": produces,
            "invalidates": invalidates,
            "run": lambda self, state, ctx: body(state),
        },
    )


def _state() -> ModelState:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return ModelState(module=module, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),), facts=frozenset({"torch"}))


def _ctx(tmp_path: Path) -> Context:
    return Context(load_config(digits_config()), None, None, None, tmp_path, Instruments(quiet=True))


def _zero_in_place(state: ModelState) -> PassResult:
    with torch.no_grad():
        state.module[1].weight.zero_()
    return PassResult(state, True)


def _copy_and_zero(state: ModelState) -> PassResult:
    module = copy.deepcopy(state.module)
    with torch.no_grad():
        module[1].weight.zero_()
    return PassResult(state.replace(module=module), False)


BROKEN = [
    ("returns a tuple", lambda s: (s, True, {}), {}, "returned tuple, not PassResult"),
    ("mutates its input", _zero_in_place, {}, "mutated the state it was given"),
    ("lies about modified", _copy_and_zero, {}, "modified=False with a different graph or module"),
    ("produces no graph", lambda s: PassResult(s, False), {"produces": frozenset({"onnx"})}, "produces 'onnx'"),
    (
        "keeps a stale module",
        lambda s: PassResult(s, False),
        {"invalidates": frozenset({"torch"})},
        "invalidates 'torch'",
    ),
]


@pytest.mark.parametrize(("case", "body", "decl", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_contracts_are_caught_and_name_the_pass(tmp_path, case, body, decl, message):
    state = _state()
    before = state.module[1].weight.clone()
    earlier = state.with_record(PassRecord("prune.magnitude", {}, True))
    with pytest.raises(PassError) as exc:
        run_pass(_pass("test.broken", body, **decl)(Options()), earlier, _ctx(tmp_path))
    text = str(exc.value)
    assert message in text and "pass 'test.broken' (after: prune.magnitude)" in text and exc.value.exit_code == 1
    if case != "mutates its input":
        assert torch.equal(state.module[1].weight, before)


def test_honest_pass_records_metrics_tables_and_timings_apart(tmp_path):
    def good(state: ModelState) -> PassResult:
        module = copy.deepcopy(state.module)
        table = Table("t", ("layer", "ms"), (("fc", 1.25),), timed=frozenset({1}))
        return PassResult(state.replace(module=module), True, {"layers": 1}, (table,), {"x_ms": 1.25})

    out = run_pass(_pass("test.good", good)(Options()), _state(), _ctx(tmp_path))
    record = out.history[-1]
    assert record.metrics == {"layers": 1} and record.timings == {"x_ms": 1.25}
    assert record.stable_json()["tables"] == [{"title": "t", "header": ["layer"], "rows": [["fc"]]}]
    assert record.timing_json()["tables"][0]["header"] == ["layer", "ms"]
    assert record.stable_json()["config"] == {"measure_latency": True}


def test_unexpected_exception_in_a_pass_is_exit_1_naming_pass_and_predecessors(tmp_path, capsys):
    def explode(state: ModelState) -> PassResult:
        raise ZeroDivisionError("division by zero in layer fc")

    registry.register(registry.PASSES, "test.explodes", _pass("test.explodes", explode))
    cfg = digits_config(passes=[{"prune.magnitude": {"measure_onnx": False}}, {"test.explodes": {}}])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert "internal error: pass 'test.explodes' (after: prune.magnitude): ZeroDivisionError" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_manifest_keeps_config_keys_and_drops_only_declared_timings(tmp_path):
    def timed(state: ModelState) -> PassResult:
        module = copy.deepcopy(state.module)
        table = Table("timed table", ("what", "latency ms"), (("fc", 0.5),), timed=frozenset({1}))
        return PassResult(state.replace(module=module), True, {"latency_budget_met": True}, (table,), {"ms": 0.5})

    registry.register(registry.PASSES, "test.timed", _pass("test.timed", timed, invalidates=frozenset({"onnx"})))
    result = build(digits_config(passes=[{"test.timed": {"measure_latency": False}}]), out=tmp_path / "o", quiet=True)
    record = result.manifest["passes"][0]
    assert record["config"] == {"measure_latency": False}  # a key named like a timing survives (no regex)
    check = record["metrics"].pop("validation_check")  # the driver's score of the module it returned (issue 24)
    assert check["metric"] == "top1" and check["drift"] == 0.0 and not check["over_budget"]
    assert record["metrics"] == {"latency_budget_met": True}
    assert record["tables"] == [{"title": "timed table", "header": ["what"], "rows": [["fc"]]}]
    timings = json.loads((tmp_path / "o" / "timings.json").read_text())
    assert timings["passes"][0]["timings"] == {"ms": 0.5}
    assert "| fc | 0.5 |" in (tmp_path / "o" / "report.md").read_text()


def test_target_level_passes_enter_each_artifacts_history(demo_build):
    passes = {
        f"{a['target']}/{a['precision']}": [p["name"] for p in a["passes"]] for a in demo_build.manifest["artifacts"]
    }
    assert passes == {
        "onnx/fp32": ["export.onnx", "simplify"],
        "onnx/int8": ["export.onnx", "simplify", "quantize.int8", "cpu.int8"],
    }
    report = (demo_build.out_dir / "report.md").read_text()
    assert "| quantize.int8 | onnx/int8 |" in report and "| export.onnx | onnx |" in report


def test_a_third_party_package_adds_a_pass_through_entry_points(tmp_path):
    site = tmp_path / "site"
    (site / "acme_passes").mkdir(parents=True)
    (site / "acme_passes" / "__init__.py").write_text(
        textwrap.dedent("""
        from pydantic import BaseModel
        from deployc.compiler.contracts import Pass, PassResult

        class Options(BaseModel):
            strength: int = 1

        class Noop(Pass):
            name = "acme.noop"
            Config = Options
            requires = frozenset({"torch"})

            def run(self, state, ctx):
                return PassResult(state, False)
    """)
    )
    dist = site / "acme_passes-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-passes\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[deployc.passes]\nacme.noop = acme_passes:Noop\n")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(digits_config(passes=[{"acme.noop": {"strength": 2}}])))
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "deployc.cli", "validate-config", str(cfg)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    assert "acme.noop{strength=2} | onnx" in run.stdout


class _TargetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    precision: list[str] = ["fp32"]


class _HalfBrokenTarget(Target):
    """fp32 works; int8's 'quantizer' refuses the model; fp16 builds a file its runtime cannot load."""

    name = "test.halfbroken"
    Options = _TargetOptions

    def lower(self, state, ctx):
        return state

    def emit(self, state, lowered, ctx, precision):
        if precision == "int8":
            raise ValueError("quantizer rejects INT64 input 0")
        path = ctx.work_dir / "halfbroken" / f"m.{precision}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(precision.encode())
        return Artifact(self.name, precision, path, "torch", torch.__version__)

    def infer(self, artifact, batch):
        if artifact.precision == "fp16":
            raise RuntimeError("InvalidGraph: unrecognized attribute axis")
        with torch.no_grad():
            return [self.module(torch.from_numpy(batch["image"])).numpy()]


def test_one_artifacts_failure_never_discards_the_others(tmp_path, digits_model):
    _HalfBrokenTarget.module = digits_model
    registry.register(registry.TARGETS, "test.halfbroken", _HalfBrokenTarget)
    config = digits_config(targets={"test.halfbroken": {"precision": ["fp32", "int8", "fp16"]}})
    result = build(config, out=tmp_path / "o", quiet=True)
    gates = {a["precision"]: a["gate"] for a in result.manifest["artifacts"]}
    assert gates["fp32"]["status"] == "pass" and result.exit_code == 3
    assert gates["int8"] == {"status": "error", "reason": "not built: ValueError: quantizer rejects INT64 input 0"}
    assert gates["fp16"]["status"] == "error" and "InvalidGraph" in gates["fp16"]["reason"]
    assert (tmp_path / "o" / "halfbroken" / "m.fp32.bin").is_file()
    junit = (tmp_path / "o" / "junit.xml").read_text()
    assert junit.count('type="NotBuilt"') == 2 and 'errors="2"' in junit


def _per_channel_dq_at_opset_11() -> Any:
    """What onnxruntime's quantizer wrote into paddle2onnx graphs: a DequantizeLinear with `axis` (opset ≥ 13)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.ones((4, 64), np.int8), "w_q"),
        numpy_helper.from_array(np.full(4, 0.1, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0, name="dq"),
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


def test_a_pass_emitting_an_invalid_graph_fails_naming_itself(tmp_path):
    """The postcondition every graph-emitting pass gets: checker + onnxruntime load; exit 2, not an internal error."""
    state = ModelState(onnx=None, inputs=(TensorSpec("image", ("batch", 1, 8, 8)),), facts=frozenset({"torch"}))
    emits = _pass("test.bad_qdq", lambda s: PassResult(s.replace(onnx=_per_channel_dq_at_opset_11()), True))
    emits.produces = frozenset({"onnx"})
    with pytest.raises(InvalidGraphError) as exc:
        run_pass(emits(Options()), state.with_record(PassRecord("export.onnx", {}, True)), _ctx(tmp_path))
    text = str(exc.value)
    assert text.startswith("pass 'test.bad_qdq' (after: export.onnx): emitted an invalid ONNX graph:")
    assert "axis" in text and exc.value.exit_code == 2
