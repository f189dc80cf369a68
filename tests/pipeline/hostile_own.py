"""Rows of tests/pipeline/test_hostile.py that issue 13 does not name (out dir, config, data, weights, gates)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from tests.pipeline.hostile_support import (
    MODELS,
    Env,
    _built_out,
    config,
    data_npz,
    ok_build,
    onnx_cfg,
    onnx_model,
    out_untouched,
    snapshot,
    symlinked,
    vc,
    victim_intact,
    write_config,
)

# ---- the out dir -----------------------------------------------------------------------------------------------


def symlinked_target_dir(env: Env) -> None:
    _built_out(env)
    (env.tmp / "elsewhere").mkdir()
    for p in (env.out / "onnx").iterdir():
        p.unlink()
    (env.out / "onnx").rmdir()
    (env.out / "onnx").symlink_to(env.tmp / "elsewhere")
    env.build(config(env.tmp))


def elsewhere_empty(env: Env) -> None:
    assert not any((env.tmp / "elsewhere").iterdir())


def user_staging_named_folder(env: Env) -> None:
    _built_out(env)
    (env.out / ".deployc-staging-mine").mkdir()
    (env.out / ".deployc-staging-mine" / "keep.txt").write_text("mine")
    env.build(config(env.tmp), "--force")


def user_staging_kept(env: Env) -> None:
    assert (env.out / ".deployc-staging-mine" / "keep.txt").read_text() == "mine"


def leftover_staging(env: Env) -> None:
    _built_out(env)
    marker = json.loads((env.out / ".deployc-out.json").read_text())
    (env.out / ".deployc-staging-killed").mkdir()
    (env.out / ".deployc-staging-killed" / "half.onnx").write_bytes(b"half")
    marker["staging"] = [".deployc-staging-killed"]
    (env.out / ".deployc-out.json").write_text(json.dumps(marker))
    env.build(config(env.tmp))


def leftover_gone(env: Env) -> None:
    assert not (env.out / ".deployc-staging-killed").exists()
    assert not [p for p in env.out.iterdir() if p.name.startswith(".deployc-staging-")]


def stale_artifact(env: Env) -> None:
    data_npz(env.tmp)
    assert env.build(config(env.tmp, targets={"onnx": {"precision": ["fp32", "fp16"]}})) == 0, env.err
    (env.out / "onnx" / "mine.txt").write_text("mine")
    env.build(config(env.tmp), "--force")


def stale_removed_user_kept(env: Env) -> None:
    assert not (env.out / "onnx" / "h.fp16.onnx").exists() and (env.out / "onnx" / "h.fp32.onnx").is_file()
    assert (env.out / "onnx" / "mine.txt").read_text() == "mine"


def file_where_folder_goes(env: Env) -> None:
    _built_out(env)
    for p in (env.out / "onnx").iterdir():
        p.unlink()
    (env.out / "onnx").rmdir()
    (env.out / "onnx").write_text("the user's file")
    env.build(config(env.tmp))


def users_file_intact(env: Env) -> None:
    assert (env.out / "onnx").read_text() == "the user's file" and (env.out / "manifest.json").is_file()


def legacy_out(env: Env, tamper: bool) -> None:
    """An out dir from a deployc without the marker: adopted when its manifest's hashes match the files on disk."""
    _built_out(env)
    (env.out / ".deployc-out.json").unlink()
    if tamper:
        (env.out / "onnx" / "h.fp32.onnx").write_bytes(b"someone else's file")
        env.before = snapshot(env.out)
    env.build(config(env.tmp))


def out_is_file(env: Env) -> None:
    env.out.write_text("x")
    env.out_existed = True
    data_npz(env.tmp)
    env.build(config(env.tmp))


# ---- config ----------------------------------------------------------------------------------------------------


def text_config(text: str) -> Any:
    return lambda env: env.validate(text)


def big_config(env: Env) -> None:
    env.validate("name: big\n" + "# padding\n" * 120_000)


def config_folder(env: Env) -> None:
    (env.tmp / "cfgdir").mkdir()
    env.cli("validate-config", env.tmp / "cfgdir")


def _input_rows(inputs: list[dict]) -> Any:
    return vc(lambda e, c: c["model"].update(inputs=inputs))


# ---- data and metrics ------------------------------------------------------------------------------------------


def onnx_relu(env: Env, **data: Any) -> dict:
    """The config of a one-output ONNX model (y = Relu(x)) with `data` keys added."""
    cfg = onnx_cfg(env, onnx_model(env))
    cfg["data"].update(data)
    return cfg


def sample_count(env: Env) -> None:
    data_npz(env.tmp, labels=np.arange(60) % 5)
    env.build(config(env.tmp))


def scalar_varies(env: Env) -> None:
    data_npz(env.tmp, s=np.linspace(1, 2, 64).astype(np.float32))
    cfg = config(env.tmp, model="scaled")
    cfg["model"]["inputs"] = [{"name": "x", "shape": ["batch", 8]}, {"name": "s", "shape": []}]
    env.validate(cfg)


def factory(name: str, **extra: Any) -> Any:
    def run(env: Env) -> None:
        env.build(config(env.tmp, data={"validation": {"kind": "factory", "path": f"{MODELS}:{name}", **extra}}))

    return run


def argparse_at_import(env: Env) -> None:
    (env.tmp / "script.py").write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--epochs', required=True)\n"
        "args = p.parse_args()\ndef make():\n    pass\n"
    )
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["factory"] = "script.py:make"
    env.validate(cfg)


def nan_artifact(env: Env) -> None:
    from deployc.compiler.registry import TARGETS, _registered, register_target
    from tests.pipeline.hostile_models import nan_target

    if "test.nan" not in _registered[TARGETS]:
        register_target(nan_target())
    cfg = onnx_cfg(env, onnx_model(env))
    cfg["targets"] = {"onnx": {"precision": ["fp32"]}, "test.nan": {}}
    env.build(cfg)


def strict_manifest(env: Env) -> None:
    json.loads((env.out / "manifest.json").read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


# ---- ONNX sources ----------------------------------------------------------------------------------------------


def onnx_const(env: Env, value: float) -> None:
    """y = Max(x, c) with a scalar initializer c (Magika's -inf clamp bound, or a corrupt NaN)."""
    from onnx import helper, numpy_helper

    init = numpy_helper.from_array(np.array(value, np.float32), "c")
    path = onnx_model(env, nodes=[helper.make_node("Max", ["x", "c"], ["y"])], initializers=[init])
    env.build(onnx_cfg(env, path))


def silero_like(env: Env) -> None:
    """Inputs as Silero VAD's: x [batch, 8], state [2, batch, 4] (batch on axis 1) and a scalar sr (int64 [])."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["state", "srf"], ["state_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 4]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(env.tmp / "vad.onnx"))
    rng = np.random.default_rng(1)
    data_npz(env.tmp, n=70, state=rng.standard_normal((70, 2, 4)).astype(np.float32), sr=np.full(70, 16000))
    env.build(onnx_cfg(env, env.tmp / "vad.onnx") | {"data": {"validation": "data.npz", "metric": "cosine"}})


def both_outputs_compared(env: Env) -> None:
    art = json.loads((env.out / "manifest.json").read_text())["artifacts"][0]
    assert sorted(art["metrics"]["outputs"]) == ["state_out", "y"] and art["metrics"]["metric_outputs"] == [
        "y",
        "state_out",
    ]


def fixed_batch_one(env: Env) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(env.tmp / "b1.onnx"))
    env.build(onnx_cfg(env, env.tmp / "b1.onnx"))


def near_zero_outputs(env: Env) -> None:
    """Mostly-zero probability maps (a text detector on images without text): the fp32 artifact must pass."""
    from onnx import helper, numpy_helper

    shift = numpy_helper.from_array(np.array(2.5, np.float32), "shift")
    tiny = numpy_helper.from_array(np.array(1e-7, np.float32), "tiny")
    nodes = [
        helper.make_node("Sub", ["x", "shift"], ["d"]),
        helper.make_node("Sigmoid", ["d"], ["p"]),
        helper.make_node("Mul", ["p", "tiny"], ["y"]),
    ]
    path = onnx_model(env, nodes=nodes, initializers=[shift, tiny], opset=12)  # as the paddle2onnx detector
    env.build(onnx_cfg(env, path))


# ---- weights ---------------------------------------------------------------------------------------------------


def checkpoint(env: Env, wrap: Any) -> None:
    import torch

    from tests.pipeline.hostile_models import mlp

    torch.save(wrap(mlp().state_dict()), env.tmp / "ckpt.pt")
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["weights"] = "ckpt.pt"
    env.build(cfg)


def weights_as_int(env: Env) -> None:
    import torch

    torch.save({"fc.weight": torch.zeros(5, 8, dtype=torch.int64), "fc.bias": torch.zeros(5)}, env.tmp / "w.pt")
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["weights"] = "w.pt"
    env.validate(cfg)


def step_summary_missing(env: Env) -> None:
    env.mp.setenv("GITHUB_STEP_SUMMARY", str(env.tmp / "no" / "such" / "summary.md"))
    ok_build(env)


def target_not_in_config(env: Env) -> None:
    data_npz(env.tmp)
    env.cli("build", write_config(env.tmp, config(env.tmp)), "--out", env.out, "--target", "tflite")


OWN_ROWS = [
    ("symlinked_target_folder", symlinked_target_dir, 2, r"out/onnx' is a symbolic link", elsewhere_empty),
    (
        "symlinked_marker_file",
        symlinked(".deployc-out.json"),
        2,
        r"\.deployc-out\.json' is a symbolic link",
        victim_intact,
    ),
    ("user_folder_named_like_staging_kept", user_staging_named_folder, 0, r"onnx/fp32: pass", user_staging_kept),
    ("killed_build_staging_removed", leftover_staging, 0, r"onnx/fp32: pass", leftover_gone),
    ("stale_artifact_removed_user_file_kept", stale_artifact, 0, r"onnx/fp32: pass", stale_removed_user_kept),
    (
        "file_where_target_folder_goes",
        file_where_folder_goes,
        2,
        r"out/onnx' is a file where deployc needs a folder",
        users_file_intact,
    ),
    ("legacy_out_dir_adopted", lambda e: legacy_out(e, tamper=False), 0, r"onnx/fp32: pass"),
    (
        "legacy_out_dir_with_foreign_file_refused",
        lambda e: legacy_out(e, tamper=True),
        2,
        r"already holds files deployc did not write",
        out_untouched,
    ),
    ("out_is_a_file", out_is_file, 2, r"--out: '.*out' exists and is not a folder"),
    ("config_is_a_folder", config_folder, 2, r"cfgdir: is a folder, not a config file"),
    ("config_over_1_mib", big_config, 2, r"c\.yaml' is [\d.]+ MiB; a config file over 1\.0 MiB is refused"),
    ("config_top_level_list", text_config("- name: x\n"), 2, r"the top level must be a mapping"),
    (
        "config_max_drift_nan",
        vc(lambda e, c: c.update(validate={"max_drift": float("nan")})),
        2,
        r"validate\.max_drift: Input should be a finite number",
    ),
    ("name_starting_with_dash", vc(lambda e, c: c.update(name="-rf")), 2, r"name: String should match pattern"),
    (
        "zero_size_dim",
        _input_rows([{"name": "x", "shape": ["batch", 0]}]),
        2,
        r"shape\[1\] is 0; fixed dimensions are positive",
    ),
    (
        "duplicate_input_names",
        _input_rows([{"name": "x", "shape": ["batch", 8]}] * 2),
        2,
        r"the name 'x' is used twice",
    ),
    (
        "unknown_metric",
        vc(lambda e, c: c["data"].update(metric="cosin")),
        2,
        r"unknown metric 'cosin' \(did you mean 'cosine'\?\)",
    ),
    (
        "data_output_unknown_name",
        lambda e: e.validate(onnx_relu(e, output="yy")),
        2,
        r"data\.output: no output 'yy' \(did you mean 'y'\?\)",
    ),
    (
        "data_output_index_out_of_range",
        lambda e: e.validate(onnx_relu(e, output=3)),
        2,
        r"data\.output: index 3, but the model has 1 outputs",
    ),
    (
        "top5_on_five_classes",
        vc(lambda e, c: c["data"].update(metric="top5")),
        2,
        r"top5 on an output of 5 classes is always 1\.0",
    ),
    (
        "negative_labels",
        lambda e: (data_npz(e.tmp, labels=np.full(64, -1)), e.build(config(e.tmp))),
        2,
        r"64 of 64 are outside 0\.\.4 \(e\.g\. -1 at sample 0\)",
    ),
    ("labels_fewer_than_samples", sample_count, 2, r"arrays disagree on the sample count: \{'x': 64, 'labels': 60\}"),
    ("scalar_input_that_varies", scalar_varies, 2, r"input 's' is a scalar .* must all hold one value, found 64"),
    (
        "endless_factory_without_limit",
        factory("endless"),
        2,
        r"yields more than 100000 samples; set data\.validation\.limit",
    ),
    (
        "factory_raises_midway",
        factory("raises_midway"),
        2,
        r"factory '.*:raises_midway' raised OSError: sensor disconnected",
    ),
    ("factory_sys_exit_midway", factory("exits_midway"), 2, r"factory '.*:exits_midway' called sys\.exit\(3\)"),
    ("argparse_at_import", argparse_at_import, 2, r"importing '.*script\.py' called sys\.exit\(2\)"),
    (
        "metric_returns_nan",
        vc(lambda e, c: c["data"].update(metric=f"{MODELS}:nan_metric")),
        2,
        r"is nan for the model as loaded",
    ),
    (
        "artifact_nan_outputs_fail_gate",
        nan_artifact,
        3,
        r"test\.nan/fp32: fail — non-finite outputs: output 'y': \d+\.\d% of values",
        strict_manifest,
    ),
    ("onnx_nan_initializer", lambda e: onnx_const(e, float("nan")), 2, r"initializer 'c' contains NaN"),
    ("onnx_minus_inf_clamp_bound", lambda e: onnx_const(e, float("-inf")), 0, r"onnx/fp32: pass"),
    (
        "checkpoint_under_model_state",
        lambda e: checkpoint(e, lambda sd: {"step": 3, "model_state": sd, "optimizer_state": {}}),
        0,
        r"using the state_dict under key 'model_state'",
    ),
    (
        "checkpoint_without_fitting_dict",
        lambda e: checkpoint(e, lambda sd: {"model": {"other.w": sd["fc.bias"]}, "epoch": 1}),
        2,
        r"is a checkpoint with keys 'model' \(dict\), 'epoch' \(int\)",
    ),
    (
        "dataparallel_module_prefix",
        lambda e: checkpoint(e, lambda sd: {f"module.{k}": v for k, v in sd.items()}),
        0,
        r"drops the 'module\.' prefix",
    ),
    (
        "weights_of_wrong_dtype",
        weights_as_int,
        2,
        r"entry 'fc\.weight' is torch\.int64, the model holds torch\.float32",
    ),
    ("silero_like_batch_on_axis_1_and_scalar", silero_like, 0, r"onnx/fp32: pass", both_outputs_compared),
    ("onnx_fixed_batch_of_one", fixed_batch_one, 0, r"on 64 samples.*\n(.*\n)*onnx/fp32: pass"),
    ("near_zero_outputs_fp32_passes", near_zero_outputs, 0, r"onnx/fp32: pass — outputs equal the reference"),
    ("step_summary_in_missing_folder", step_summary_missing, 2, r"GITHUB_STEP_SUMMARY: cannot append to"),
    ("target_flag_not_in_config", target_not_in_config, 2, r"--target tflite: not in this config's targets \(onnx\)"),
]
