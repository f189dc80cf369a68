"""The rows of tests/pipeline/test_hostile.py: (id, run, exit code, stderr regex, check on disk afterwards).

ISSUE_ROWS are the cases issue 13 names; OWN_ROWS (hostile_own.py) are cases it does not name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
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

# ---- data loss -------------------------------------------------------------------------------------------------


def foreign_out(env: Env, *flags: str) -> None:
    env.out.mkdir()
    (env.out / ".staging-photos").mkdir()
    (env.out / ".staging-photos" / "beach.jpg").write_bytes(b"jpeg")
    for name in ("report.md", "manifest.json", "junit.xml"):
        (env.out / name).write_text(f"the user's own {name}")
    env.before = snapshot(env.out)
    env.out_existed = True
    data_npz(env.tmp)
    env.build(config(env.tmp), *flags)


def home_like(env: Env) -> None:
    env.out.mkdir()
    (env.out / ".bashrc").write_text("alias ll='ls -l'")
    (env.out / "notes.txt").write_text("mine")
    env.before = snapshot(env.out)
    env.out_existed = True
    data_npz(env.tmp)
    env.build(config(env.tmp))


def name_dotdot(env: Env) -> None:
    data_npz(env.tmp)
    env.cli("build", write_config(env.tmp, config(env.tmp, name="..")))  # default out: deployc-out/<name>


def no_reports_in_cwd(env: Env) -> None:
    assert not any((env.tmp / n).exists() for n in ("report.md", "junit.xml", "deployc-out"))


def symlinked_report(env: Env) -> None:
    _built_out(env)
    (env.tmp / "victim.txt").write_text("precious")
    (env.out / "report.md").unlink()
    (env.out / "report.md").symlink_to(env.tmp / "victim.txt")
    env.build(config(env.tmp))


# ---- silent wrong results --------------------------------------------------------------------------------------


def labels_out_of_range(env: Env) -> None:
    data_npz(env.tmp, labels=np.arange(64) % 12)
    env.build(config(env.tmp))


def float_labels(env: Env) -> None:
    data_npz(env.tmp, labels=np.linspace(0, 4, 64))
    env.build(config(env.tmp))


def string_labels(env: Env) -> None:
    data_npz(env.tmp, labels=np.array(["cat", "dog"] * 32))
    env.build(config(env.tmp))


def _two_builds_with_cache(env: Env, damage: Callable[[Path], None]) -> None:
    data_npz(env.tmp)
    cfg = config(env.tmp)
    assert env.build(cfg) == 0, env.err
    clean = json.loads((env.out / "manifest.json").read_text())["artifacts"][0]["sha256"]
    entries = sorted((env.tmp / "cache" / "passes").glob("*/*.onnx"))
    assert entries, "the first build cached nothing"
    for entry in entries:
        damage(entry)
    env.out_name = "out-again"  # a fresh out dir: a no-op rebuild of the first would not read the cache
    env.build(cfg)
    env.clean_sha = clean


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def cache_flipped_byte(env: Env) -> None:
    _two_builds_with_cache(env, flip_byte)


def same_artifact_as_clean(env: Env) -> None:
    assert json.loads((env.out / "manifest.json").read_text())["artifacts"][0]["sha256"] == env.clean_sha


def nan_outputs(env: Env) -> None:
    data_npz(env.tmp)
    env.build(config(env.tmp, model="nan_on_some"))


def no_targets(env: Env) -> None:
    data_npz(env.tmp)
    env.build(config(env.tmp, targets={}))


def duplicate_keys(env: Env) -> None:
    data_npz(env.tmp)
    text = json.dumps({k: v for k, v in config(env.tmp).items() if k not in ("validate", "base_dir")})
    env.validate(text[:-1] + ', "validate": {"max_drift": 0.0}, "validate": {"max_drift": 0.9}}')


def factory_sys_exit(env: Env) -> None:
    (env.tmp / "exits.py").write_text("import sys\nsys.exit(0)\ndef make():\n    pass\n")
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["factory"] = "exits.py:make"
    env.build(cfg)


def kill_while_publishing(env: Env) -> None:
    """Publishing dies after the old manifest is gone and one new file moved in: the old reports must be gone."""
    _built_out(env)
    from deployc.storage.folder import Folder

    real, moved = Folder.move_in, []

    def dying_move(self: Folder, source: Folder, rel: str) -> None:
        real(self, source, rel)
        moved.append(rel)
        if len(moved) == 1:
            raise KeyboardInterrupt  # what a kill does to the process here: it never comes back

    env.mp.setattr(Folder, "move_in", dying_move)
    env.build(config(env.tmp, targets={"onnx": {"precision": ["fp32", "fp16"]}}))


def no_stale_reports(env: Env) -> None:
    assert not any((env.out / n).exists() for n in ("manifest.json", "report.md", "junit.xml", "report.html"))


def tensorrt_proxy(env: Env) -> None:
    ok_build(env, targets={"tensorrt": {"precision": ["fp32"]}})


def proxy_everywhere(env: Env) -> None:
    import xml.etree.ElementTree as ET

    text = "pass (proxy: onnxruntime, engine not built)"
    assert text in (env.out / "report.md").read_text() and text in (env.out / "report.html").read_text()
    cases = {c.get("name"): c for c in ET.parse(env.out / "junit.xml").getroot().iter("testcase")}
    engine = cases["tensorrt/fp32 engine"].find("skipped")
    assert engine is not None and "not built" in engine.get("message")
    assert cases["tensorrt/fp32 (proxy: onnxruntime)"].find("failure") is None


# ---- hangs -----------------------------------------------------------------------------------------------------


def alias_bomb(env: Env) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    env.validate("\n".join(lines) + "\n")


def endless_factory_with_limit(env: Env) -> None:
    cfg = config(env.tmp, data={"validation": {"kind": "factory", "path": f"{MODELS}:endless", "limit": 100}})
    env.build(cfg)


def built_100_samples(env: Env) -> None:
    assert json.loads((env.out / "manifest.json").read_text())["reference"]["samples"] == 100


# ---- exit 1 or vague before ------------------------------------------------------------------------------------


def non_utf8(env: Env) -> None:
    (env.tmp / "c.yaml").write_bytes(b"name: caf\xe9\n")
    env.cli("validate-config", env.tmp / "c.yaml")


def deep_yaml(env: Env) -> None:
    env.validate("[" * 100_000 + "]" * 100_000)


def _inputs(env: Env, inputs: list[dict], cmd: str = "validate") -> None:
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["inputs"] = inputs
    getattr(env, cmd)(cfg)


def negative_dims(env: Env) -> None:
    _inputs(env, [{"name": "x", "shape": ["batch", -8]}])


def long_name(env: Env) -> None:
    data_npz(env.tmp)
    env.validate(config(env.tmp, name="n" * 250))


def axis_outside(env: Env) -> None:
    _inputs(env, [{"name": "x", "shape": ["batch", 8], "dynamic_axes": {5: "seq"}}])


def huge_shape(env: Env) -> None:
    _inputs(env, [{"name": "x", "shape": ["batch", 1, 100000, 100000]}])


def onnx_names_differ(env: Env) -> None:
    env.validate(onnx_cfg(env, onnx_model(env), inputs=[{"name": "image", "shape": ["batch", 8]}]))


def onnx_unknown_domain(env: Env) -> None:
    from onnx import helper

    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    env.validate(onnx_cfg(env, onnx_model(env, nodes=[node], opsets=[helper.make_opsetid("com.example", 1)])))


def token_beyond_vocab(env: Env) -> None:
    data_npz(env.tmp, ids=(np.arange(64 * 6).reshape(64, 6) % 13).astype(np.int64))
    cfg = config(env.tmp, model="embed")
    cfg["model"]["inputs"] = [{"name": "ids", "shape": ["batch", 6], "dtype": "int64"}]
    env.build(cfg)


def _weights(env: Env, obj: Any) -> None:
    import torch

    torch.save(obj, env.tmp / "w.pt")
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["weights"] = "w.pt"
    env.validate(cfg)


def state_dict_list(env: Env) -> None:
    _weights(env, {"fc.weight": [[0.0] * 8] * 5, "fc.bias": [0.0] * 5})


def state_dict_sparse(env: Env) -> None:
    import torch

    _weights(env, {"fc.weight": torch.zeros(5, 8).to_sparse(), "fc.bias": torch.zeros(5)})


def nested_outputs(env: Env) -> None:
    ok_build(env, model="nested", data={"validation": "data.npz", "metric": "cosine"})


def one_hot(env: Env) -> None:
    data_npz(env.tmp, labels=np.eye(5, dtype=np.int64)[np.arange(64) % 5])
    env.build(config(env.tmp))


def factory_mixed(env: Env) -> None:
    env.build(config(env.tmp, data={"validation": f"{MODELS}:mixed_shapes", "metric": "top1"}))


def metric_raises(env: Env) -> None:
    (env.tmp / "metric.py").write_text("def bad(outputs, labels):\n    raise KeyError('logits')\n")
    ok_build(env, data={"validation": "data.npz", "metric": "metric.py:bad"})


def disk_full(env: Env) -> None:
    """The out dir's files cannot be written (EFBIG, as from a full disk): exit 2 naming where."""
    import resource
    import signal

    data_npz(env.tmp)
    path = write_config(env.tmp, config(env.tmp))
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        env.cli("build", path, "--out", env.out, "--no-cache")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def no_manifest(env: Env) -> None:
    assert not (env.out / "manifest.json").exists()


def cache_dir(env: Env, where: str) -> None:
    if where == "file":
        (env.tmp / "cachefile").write_text("not a folder")
        env.mp.setenv("DEPLOYC_CACHE_DIR", str(env.tmp / "cachefile"))
    else:
        env.mp.setenv("DEPLOYC_CACHE_DIR", "/sys/deployc-cache")  # read-only even for root
    ok_build(env)


def cache_meta_empty(env: Env) -> None:
    _two_builds_with_cache(env, lambda model: model.with_suffix(".json").write_text("{}"))


def prune_racing_build(env: Env) -> None:
    """`cache prune --max-size 0` runs again and again while a build reads and writes the cache."""
    import threading

    from deployc.compiler.pass_cache import PassCache

    stop = threading.Event()

    def prune() -> None:
        while not stop.is_set():
            PassCache().prune(0)

    thread = threading.Thread(target=prune)
    data_npz(env.tmp)
    cfg = config(env.tmp, targets={"onnx": {"precision": ["fp32", "dynamic"]}})
    assert env.build(cfg) == 0  # warm cache, then race
    env.out_name = "out-again"  # a fresh out dir, so the second build runs (and reads the cache)
    thread.start()
    try:
        env.build(cfg)
    finally:
        stop.set()
        thread.join()


def prune_size(env: Env, size: str) -> None:
    env.cli("cache", "prune", f"--max-size={size}")


def step_summary_folder(env: Env) -> None:
    (env.tmp / "summary").mkdir()
    env.mp.setenv("GITHUB_STEP_SUMMARY", str(env.tmp / "summary"))
    ok_build(env)


def export_error_line(env: Env) -> None:
    ok_build(env, model="branchy")


def _other_weights(env: Env, cfg: dict) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(7, 8), "fc.bias": torch.zeros(7)}, str(env.tmp / "other.safetensors"))
    cfg["model"]["weights"] = "other.safetensors"


def _branchy(env: Env, cfg: dict) -> None:
    cfg["model"]["factory"] = f"{MODELS}:branchy"


ISSUE_ROWS = [
    ("out_dir_with_user_files", foreign_out, 2, r"already holds files deployc did not write", out_untouched),
    (
        "out_dir_home",
        home_like,
        2,
        r"already holds files deployc did not write \(\.bashrc, notes\.txt\)",
        out_untouched,
    ),
    (
        "force_never_replaces_user_reports",
        lambda e: foreign_out(e, "--force"),
        2,
        r"never replaced, even with --force",
        out_untouched,
    ),
    (
        "name_dotdot_without_out",
        name_dotdot,
        2,
        r"config.yaml: name: String should match pattern|c\.yaml: name:",
        no_reports_in_cwd,
    ),
    ("symlink_report_in_out_dir", symlinked_report, 2, r"report\.md' is a symbolic link", victim_intact),
    ("symlink_lock_file", symlinked(".deployc.lock"), 2, r"\.deployc\.lock' is a symbolic link", victim_intact),
    ("labels_outside_class_range", labels_out_of_range, 2, r"labels: \d+ of 64 are outside 0\.\.4"),
    ("float_labels", float_labels, 2, r"labels are float64; top1 needs integer class ids"),
    ("string_labels", string_labels, 2, r"labels are <U3; top1 needs integer class ids"),
    ("cache_entry_flipped_byte", cache_flipped_byte, 0, r"pass cache entry .* is damaged", same_artifact_as_clean),
    (
        "model_nan_on_41_percent",
        nan_outputs,
        2,
        r"non-finite outputs: output 'output_0': \d+\.\d% of values are NaN/Inf",
    ),
    ("targets_empty", no_targets, 2, r"targets: .*no targets: a build must produce at least one artifact"),
    ("duplicate_yaml_keys", duplicate_keys, 2, r"duplicate key 'validate'"),
    ("factory_module_sys_exit", factory_sys_exit, 2, r"importing '.*exits\.py' called sys\.exit\(0\)"),
    ("kill_while_publishing", kill_while_publishing, 130, r"interrupted", no_stale_reports),
    (
        "tensorrt_proxy_status",
        tensorrt_proxy,
        0,
        r"tensorrt/fp32: pass \(proxy: onnxruntime, engine not built\)",
        proxy_everywhere,
    ),
    ("yaml_alias_bomb", alias_bomb, 2, r"expands to more than 100000 values"),
    (
        "endless_factory_limit_100",
        endless_factory_with_limit,
        0,
        r"reference top1 = .* on 100 samples",
        built_100_samples,
    ),
    ("non_utf8_config", non_utf8, 2, r"c\.yaml: not UTF-8 text \(byte 0xe9 at offset 9\)"),
    ("yaml_100000_deep", deep_yaml, 2, r"c\.yaml: (nested too deeply|nested deeper than)"),
    ("negative_dims", negative_dims, 2, r"model\.inputs\[0\]: shape\[1\] is -8"),
    ("name_250_characters", long_name, 2, r"name: String should have at most 100 characters"),
    ("dynamic_axis_outside_shape", axis_outside, 2, r"dynamic_axes: axis 5 is outside shape"),
    ("shape_74_gib", huge_shape, 2, r"37\.3 GiB per sample"),
    (
        "onnx_input_names_differ",
        onnx_names_differ,
        2,
        r"model\.inputs: \['image'\] do not match the inputs of .*\['x'\]",
    ),
    (
        "onnx_unknown_domain_op",
        onnx_unknown_domain,
        2,
        r"model\.onnx: onnxruntime cannot load .*Frobnicate|com\.example",
    ),
    (
        "token_id_beyond_vocabulary",
        token_beyond_vocab,
        2,
        r"the model as loaded fails on these samples: IndexError.*token ids",
    ),
    ("state_dict_holding_a_list", state_dict_list, 2, r"entry 'fc\.\w+' holds a list, not a tensor"),
    ("state_dict_sparse_tensor", state_dict_sparse, 2, r"entry 'fc\.weight' is a torch\.sparse_coo tensor"),
    ("nested_tuple_outputs", nested_outputs, 0, r"onnx/fp32: pass"),
    ("one_hot_labels", one_hot, 2, r"labels are one-hot \[64, 5\]; top1 needs class ids"),
    ("factory_mixed_shapes", factory_mixed, 2, r"item 1: input 'x' has shape \[9\] per sample, earlier items \[8\]"),
    ("metric_raises", metric_raises, 2, r"data\.metric: 'metric\.py:bad' raised on the reference: KeyError"),
    ("disk_full", disk_full, 2, r"cannot write '.*' \(File too large\)", no_manifest),
    ("cache_dir_read_only", lambda e: cache_dir(e, "ro"), 0, r"pass cache '/sys/deployc-cache/passes' is unusable"),
    ("cache_path_is_a_file", lambda e: cache_dir(e, "file"), 0, r"pass cache '.*cachefile/passes' is unusable"),
    ("cache_metadata_replaced_by_empty", cache_meta_empty, 0, r"is damaged \(.*hash", same_artifact_as_clean),
    ("cache_prune_racing_build", prune_racing_build, 0, r"onnx/dynamic: pass"),
    ("cache_prune_max_size_inf", lambda e: prune_size(e, "inf"), 2, r"--max-size: 'inf' must be a finite size"),
    ("cache_prune_max_size_negative", lambda e: prune_size(e, "-5GB"), 2, r"--max-size: '-5GB' must be a finite size"),
    ("github_step_summary_is_a_folder", step_summary_folder, 2, r"GITHUB_STEP_SUMMARY: '.*summary' is a folder"),
    (
        "export_error_names_layer_and_line",
        export_error_line,
        3,
        r"at layer body\.1 \(Gate\), .*hostile_models\.py:\d+: if \(y\.sum\(\) > 0\)\.item\(\):",
    ),
    (
        "validate_config_missing_weights",
        vc(lambda e, c: c["model"].update(weights="nope.safetensors")),
        2,
        r"model\.weights: file '.*nope\.safetensors' not found",
    ),
    (
        "validate_config_misspelled_factory",
        vc(lambda e, c: c["model"].update(factory=f"{MODELS}:mpl")),
        2,
        r"'mpl' is not a callable in .* \(did you mean 'mlp'\?\)",
    ),
    (
        "validate_config_wrong_input_shape",
        vc(lambda e, c: c["model"].update(inputs=[{"name": "x", "shape": ["batch", 9]}])),
        2,
        r"model\.inputs: the model does not accept inputs x\['batch', 9\]",
    ),
    (
        "validate_config_weights_of_another_model",
        vc(_other_weights),
        2,
        r"layer 'fc\.(weight|bias)' has shape \[7(, 8)?\], the model expects \[5(, 8)?\]",
    ),
    (
        "validate_config_missing_inputs",
        vc(lambda e, c: c["model"].pop("inputs")),
        2,
        r"model\.inputs: give the input specs",
    ),
    (
        "validate_config_model_cannot_export",
        vc(_branchy),
        2,
        r"torch\.export cannot trace the model.*at layer body\.1 \(Gate\)",
    ),
]

from tests.pipeline.hostile_own import OWN_ROWS  # noqa: E402  (the rows issue 13 does not name)

__all__ = ["ISSUE_ROWS", "OWN_ROWS"]
