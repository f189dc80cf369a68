"""Rows of tests/pipeline/test_hostile.py for the commands around `build` (issue 23): explain, bench, sweep, cache,
demo, validate-config and the Python API keep build's promises through one I/O boundary (deployc.storage).

ISSUE23_ROWS are the examples issue 23 names; OWN23_ROWS (hostile_commands_own.py) are cases it does not name.
Shared set-ups are here: a finished build dir copied from a session build, a sweep, a Python API call.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import DeploycError
from tests.pipeline.hostile_support import (
    Env,
    config,
    data_npz,
    ok_build,
    onnx_cfg,
    onnx_model,
    victim_intact,
    write_config,
)

EVIL = """from pathlib import Path
Path(__file__).with_name("pwned").write_text("code named by a build dir ran")

def gen():
    yield {"x": [[0.0] * 8]}, [0]

def make():
    import torch
    return torch.nn.Linear(8, 5)
"""


def build_cfg(folder: Path) -> dict:
    """The config of the session build: onnx fp32 + int8 of the MLP, validated and calibrated on data.npz."""
    return config(
        folder,
        data={"validation": "data.npz", "calibration": "data.npz", "metric": "top1", "skip_checks": ["chance"]},
        targets={"onnx": {"precision": ["fp32", "int8"]}},
    )


def built(env: Env) -> Path:
    """env.out: a copy of the session's finished build; env.tmp: its config (returned) and data."""
    shutil.copytree(env.fixture("hostile_build") / "out", env.out, symlinks=True)
    data_npz(env.tmp)
    env.out_existed = True
    return write_config(env.tmp, build_cfg(env.tmp))


def edit_manifest(env: Env, change: Callable[[dict], Any]) -> None:
    path = env.out / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def nothing_ran(env: Env) -> None:
    assert not (env.tmp / "pwned").exists(), "code named by a build dir ran"


def api(env: Env, call: Callable[[], Any]) -> None:
    """A Python API call, recorded like a CLI run: exit code and 'deployc: error: ...'."""
    env.command = "python API"
    try:
        call()
        env.code, env.err = 0, ""
    except DeploycError as exc:
        env.code, env.err = exc.exit_code, f"deployc: error: {exc}"


def victim(env: Env) -> Path:
    (env.tmp / "victim.txt").write_text("precious")
    return env.tmp / "victim.txt"


def sweep_files(env: Env, vary: dict, base: dict | str | None = None, **sections: Any) -> Path:
    """A sweep file over the MLP's config (vary: dotted key -> values) and its base config."""
    data_npz(env.tmp)
    base_text = (
        base
        if isinstance(base, str)
        else json.dumps(base or {k: v for k, v in config(env.tmp).items() if k != "base_dir"})
    )
    (env.tmp / "base.yaml").write_text(base_text)
    path = env.tmp / "sweep.yaml"
    path.write_text(json.dumps({"base": "base.yaml", "vary": vary, **sections}))
    return path


def sweep(env: Env, vary: dict, *flags: Any, **sections: Any) -> None:
    env.cli("sweep", sweep_files(env, vary, **sections), "--out", env.out, *flags)


def npz_member(path: Path, name: str, header: dict, body: bytes) -> None:
    """Add a member to an .npz whose .npy header says `header` and whose data is `body` (maybe much shorter)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(name, buf.getvalue() + body)


# ---- data loss and security --------------------------------------------------------------------------------------


def marker_lists(entry: str | None, *flags: str) -> Callable[[Env], None]:
    """A finished build whose marker someone edited to list `entry` (None: the victim's absolute path); then a
    rebuild, which would remove it as a stale file of the previous build."""

    def run(env: Env) -> None:
        ok_build(env)
        target = victim(env)
        marker = env.out / ".deployc-out.json"
        data = json.loads(marker.read_text())
        data["files"].append(entry or str(target))
        marker.write_text(json.dumps(data))
        env.out_existed = True
        env.build(config(env.tmp, targets={"onnx": {"precision": ["fp16"]}}), *flags)

    return run


def explain_runs_no_factory(env: Env) -> None:
    built(env)
    (env.tmp / "evil.py").write_text(EVIL)
    source = {"kind": "factory", "path": "evil.py:gen", "split": "test", "limit": None}
    edit_manifest(env, lambda m: m["config"]["data"].update(validation=source, calibration=source))
    env.cli("explain", env.out)


def bench_runs_no_factory(env: Env) -> None:
    built(env)
    (env.tmp / "evil.py").write_text(EVIL)
    edit_manifest(env, lambda m: m["config"]["model"].update(factory="evil.py:make", allow_pickle=True))
    env.cli("bench", env.out, "--no-baselines")


def bench_md_link(env: Env) -> None:
    cfg = built(env)
    (env.out / "bench.md").symlink_to(victim(env))  # where bench used to write
    env.cli("bench", env.out, "--config", cfg, "--no-baselines", "--runs", 1, "--batch", 1)


def bench_wrote_its_folder(env: Env) -> None:
    victim_intact(env)
    assert (env.out / "bench" / "bench.md").is_file() and (env.out / "bench" / "bench.json").is_file()


def bench_out_user_files(env: Env) -> None:
    cfg = built(env)
    mine = env.tmp / "mine"
    mine.mkdir()
    for name in ("bench.json", "bench.md", "notes.txt"):
        (mine / name).write_text(f"the user's {name}")
    env.cli("bench", env.out, "--config", cfg, "--out", mine, "--no-baselines")


def user_files_kept(env: Env) -> None:
    assert sorted(p.name for p in (env.tmp / "mine").iterdir()) == ["bench.json", "bench.md", "notes.txt"]
    assert (env.tmp / "mine" / "bench.md").read_text() == "the user's bench.md"


def variant_ids(env: Env) -> list[str]:
    from deployc.sweep.search import make_search
    from deployc.sweep.spec import load_sweep

    return [v.id for v in make_search(load_sweep(env.tmp / "sweep.yaml")).ask(100)]


def sweep_variant_link(env: Env) -> None:
    path = sweep_files(env, {"validate.max_drift": [0.01, 0.02]})
    env.out.mkdir()
    (env.out / ".deployc-out.json").write_text(json.dumps({"written_by": "deployc", "files": [], "staging": []}))
    (env.tmp / "elsewhere").mkdir()
    (env.out / variant_ids(env)[0]).symlink_to(env.tmp / "elsewhere")
    env.out_existed = True
    env.cli("sweep", path, "--out", env.out)


def elsewhere_empty(env: Env) -> None:
    assert not any((env.tmp / "elsewhere").iterdir()), "something was written through the planted link"


def cache_user_folder(env: Env) -> None:
    mine = env.tmp / "mine" / "passes" / "ab"
    mine.mkdir(parents=True)
    (mine / "model.onnx").write_text("the user's model")
    (mine / "model.json").write_text('{"the": "user\'s"}')
    env.mp.setenv("DEPLOYC_CACHE_DIR", str(env.tmp / "mine"))
    env.cli("cache", "prune", "--max-size", "0")


def cache_user_files_kept(env: Env) -> None:
    mine = env.tmp / "mine" / "passes" / "ab"
    assert (mine / "model.onnx").read_text() == "the user's model" and (mine / "model.json").exists()


def swap_out_mid_build(env: Env) -> None:
    """While the build runs (just before it publishes), the out dir is moved away and a link takes its name."""
    from deployc.storage.outdir import OutDir

    (env.tmp / "elsewhere").mkdir()
    real = OutDir.publish

    def swapped(self: OutDir, only: str | None = None) -> list[str]:
        os.rename(env.out, env.tmp / "moved")
        os.symlink(env.tmp / "elsewhere", env.out)
        return real(self, only)

    env.mp.setattr(OutDir, "publish", swapped)
    data_npz(env.tmp)
    env.build(config(env.tmp))
    env.out_existed = True  # the link the row planted stays


def remove_out_mid_build(env: Env) -> None:
    import deployc.driver.build as driver

    real = driver.write_junit

    def removed(*args: Any) -> Any:
        shutil.rmtree(env.out)
        return real(*args)

    env.mp.setattr(driver, "write_junit", removed)
    data_npz(env.tmp)
    env.build(config(env.tmp))


# ---- hangs and resource blow-ups ---------------------------------------------------------------------------------


def explain_artifact(kind: str) -> Callable[[Env], None]:
    """explain on a build whose fp32 artifact was replaced by a link to /dev/zero, or by a FIFO."""

    def run(env: Env) -> None:
        built(env)
        artifact = env.out / json.loads((env.out / "manifest.json").read_text())["artifacts"][0]["path"]
        artifact.unlink()
        if kind == "/dev/zero":
            artifact.symlink_to("/dev/zero")
        else:
            fifo(artifact)
        env.cli("explain", env.out)

    return run


def fifo_after_build(where: Callable[[Env], Path]) -> Callable[[Env], None]:
    """A good build, then the file at where(env) replaced by a FIFO, then the same build again."""

    def run(env: Env) -> None:
        ok_build(env)
        where(env).unlink()
        fifo(where(env))
        env.out_existed = True
        env.build(config(env.tmp))

    return run


def step_summary_fifo(env: Env) -> None:
    env.mp.setenv("GITHUB_STEP_SUMMARY", str(fifo(env.tmp / "summary")))
    ok_build(env)


def weights(path: Callable[[Env], str]) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        data_npz(env.tmp)
        cfg = config(env.tmp)
        cfg["model"]["weights"] = path(env)
        env.build(cfg)

    return run


def sparse(env: Env, name: str, size: int) -> str:
    path = env.tmp / name
    with open(path, "wb") as f:
        f.truncate(size)  # a hole: takes no disk, reads as zeros without end
    return str(path)


def npz_unused_3gib(env: Env) -> None:
    """An unused array whose header declares 3 GiB (and holds 16 bytes): read, it would fail or fill memory."""
    data_npz(env.tmp)
    npz_member(
        env.tmp / "data.npz", "unused.npy", {"descr": "|u1", "fortran_order": False, "shape": (3 << 30,)}, b"0" * 16
    )
    env.validate(config(env.tmp))


def validated_ok(env: Env) -> None:
    assert "c.yaml: ok" in env.stdout


def factory_limit_1e9(env: Env) -> None:
    """An endless factory with limit 1e9 and a 16 MiB budget: refused at the budget with Python's per-item overhead
    counted (uncounted, ~250 bytes per 32-byte item reached ~100 MiB before the old check fired)."""
    import tracemalloc

    import deployc.data.sources as sources

    env.mp.setattr(sources, "MAX_DATA_BYTES", 16 << 20)
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["data"] = {
        "validation": {"kind": "factory", "path": f"{cfg['model']['factory'].split(':')[0]}:endless", "limit": 1e9}
    }
    tracemalloc.start()
    try:
        env.build(cfg)
        env.peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_within_budget(env: Env) -> None:
    assert env.peak < 48 << 20, f"peak {env.peak} bytes for a 16 MiB budget"


def alias_bomb_sweep(env: Env) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]"
        for p, c in zip("abcdefgh", "bcdefghi")
    ]
    sweep_files(env, {"name": ["a"]})
    (env.tmp / "sweep.yaml").write_text("\n".join(levels) + "\nbase: base.yaml\nvary: {name: *i}\n")
    env.cli("sweep", env.tmp / "sweep.yaml", "--out", env.out)


def grid(keys: int, **sections: Any) -> Callable[[Env], None]:
    """`keys` simplify passes, each one's samples varied over 10 values: 10**keys valid combinations."""

    def run(env: Env) -> None:
        base = {k: v for k, v in config(env.tmp).items() if k != "base_dir"}
        base["passes"] = [{"export.onnx": {}}] + [{"simplify": {}} for _ in range(keys)]
        vary = {f"passes[{i + 1}].simplify.samples": list(range(1, 11)) for i in range(keys)}
        env.cli("sweep", sweep_files(env, vary, base, **sections), "--out", env.out)

    return run


def simplify_chain(env: Env) -> None:
    """An ONNX chain of 400 Add/Relu nodes with simplify{max_nodes=100}: the superlinear stages are skipped."""
    from onnx import TensorProto, helper

    nodes, inits, prev = [], [], "x"
    for i in range(200):
        inits.append(helper.make_tensor(f"c{i}", TensorProto.FLOAT, [8], [0.01] * 8))
        out = "y" if i == 199 else f"r{i}"
        nodes += [helper.make_node("Add", [prev, f"c{i}"], [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [out])]
        prev = out
    path = onnx_model(env, "chain.onnx", nodes=nodes, initializers=inits)
    cfg = onnx_cfg(env, path)
    cfg["passes"] = [{"simplify": {"max_nodes": 100}}]
    env.build(cfg)


# ---- exit 1 for bad input -----------------------------------------------------------------------------------------


def manifest_text(text: str, command: str) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        cfg = built(env)
        (env.out / "manifest.json").write_text(text)
        env.cli(command, env.out, *(["--config", cfg, "--no-baselines"] if command == "bench" else []))

    return run


def option(command: str, *flags: Any) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        built(env)
        env.cli(command, env.out, *flags)

    return run


def npy_claims_3_6_tib(env: Env) -> None:
    data_npz(env.tmp, name="full.npz")
    with zipfile.ZipFile(env.tmp / "full.npz") as src, zipfile.ZipFile(env.tmp / "data.npz", "w") as dst:
        dst.writestr("labels.npy", src.read("labels.npy"))
    npz_member(env.tmp / "data.npz", "x.npy", {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}, b"\0" * 64)
    env.validate(config(env.tmp))


def config_30gb(env: Env) -> None:
    sparse(env, "c.yaml", 30 << 30)
    env.cli("build", env.tmp / "c.yaml", "--out", env.out)


# ---- silent wrong ---------------------------------------------------------------------------------------------


def duplicate_in(which: str) -> Callable[[Env], None]:
    def run(env: Env) -> None:
        path = sweep_files(env, {"validate.max_drift": [0.01, 0.02]})
        if which == "sweep":
            path.write_text("base: base.yaml\nvary: {validate.max_drift: [0.01]}\nbase: other.yaml\n")
        else:
            (env.tmp / "base.yaml").write_text((env.tmp / "base.yaml").read_text()[:-1] + ', "name": "twice"}')
        env.cli("sweep", path, "--out", env.out)

    return run


SUBPACKAGE_MODEL = """import torch
from h23_helpers.scale import FACTOR

class Scaled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(x) * FACTOR

def make():
    return Scaled()
"""


def subpackage_change(env: Env) -> None:
    """The factory imports h23_helpers/scale.py (a package below its folder); editing it must rebuild."""
    (env.tmp / "h23_helpers").mkdir()
    (env.tmp / "h23_helpers" / "__init__.py").write_text("")
    (env.tmp / "h23_helpers" / "scale.py").write_text("FACTOR = 1.0\n")
    (env.tmp / "scaled.py").write_text(SUBPACKAGE_MODEL)
    data_npz(env.tmp)
    cfg = config(env.tmp)
    cfg["model"]["factory"] = "scaled.py:make"
    assert env.build(cfg) == 0, env.err
    (env.tmp / "h23_helpers" / "scale.py").write_text("FACTOR = 2.0\n")
    env.build(cfg)


ISSUE23_ROWS = [
    (
        "marker_lists_dotdot_victim_force",
        marker_lists("../victim.txt", "--force"),
        2,
        r"--out: '.*\.deployc-out\.json' lists '\.\./victim\.txt', which is not a file inside the out dir",
        victim_intact,
    ),
    (
        "marker_lists_absolute_victim",
        marker_lists(None),
        2,
        r"lists '/.*victim\.txt', which is not a file inside the out dir",
        victim_intact,
    ),
    (
        "explain_imports_nothing_the_build_dir_names",
        explain_runs_no_factory,
        2,
        r"manifest\.json: its config names Python code \(data\.validation: 'evil\.py:gen'\).*--config",
        nothing_ran,
    ),
    (
        "bench_imports_and_unpickles_nothing_the_build_dir_names",
        bench_runs_no_factory,
        2,
        r"its config names Python code \(model\.factory: 'evil\.py:make'\)",
        nothing_ran,
    ),
    ("bench_md_symlink_not_written_through", bench_md_link, 0, r"onnx/fp32: p50", bench_wrote_its_folder),
    (
        "bench_out_keeps_user_files",
        bench_out_user_files,
        2,
        r"--out: '.*mine' already holds files deployc did not write \(bench\.json, bench\.md, notes\.txt\)",
        user_files_kept,
    ),
    (
        "sweep_variant_folder_planted_as_link",
        sweep_variant_link,
        2,
        r"--out: '.*out/[\w.=+-]+' is a symbolic link; a variant is never built into a link's target",
        elsewhere_empty,
    ),
    (
        "cache_prune_user_folder_as_cache_dir",
        cache_user_folder,
        2,
        r"cache: '.*mine/passes' is not a deployc cache \(no \.deployc-cache\.json marker\)",
        cache_user_files_kept,
    ),
    (
        "out_dir_swapped_for_link_mid_build",
        swap_out_mid_build,
        2,
        r"--out: '.*out' was removed, moved or replaced \(by a link\?\) while deployc worked in it; nothing was published",
        elsewhere_empty,
    ),
    (
        "explain_artifact_link_to_dev_zero",
        explain_artifact("/dev/zero"),
        2,
        r"artifacts\[0\]\.path: '.*h\.fp32\.onnx' is a symbolic link; deployc never follows links inside",
    ),
    (
        "explain_artifact_fifo",
        explain_artifact("fifo"),
        2,
        r"artifacts\[0\]\.path: '.*\.onnx' is not a regular file \(a FIFO",
    ),
    (
        "lock_file_replaced_by_fifo",
        fifo_after_build(lambda e: e.out / ".deployc.lock"),
        2,
        r"--out: '.*\.deployc\.lock' is a FIFO, not deployc's file",
    ),
    (
        "github_step_summary_fifo",
        step_summary_fifo,
        2,
        r"GITHUB_STEP_SUMMARY: '.*summary' is a FIFO, not a regular file",
    ),
    (
        "weights_proc_self_pagemap",
        weights(lambda e: "/proc/self/pagemap"),
        2,
        r"model\.weights: '/proc/self/pagemap' is a kernel file \(/proc, /sys\), not a regular file",
    ),
    (
        "weights_1tb_sparse_file",
        weights(lambda e: sparse(e, "w.safetensors", 1 << 40)),
        2,
        r"model\.weights: '.*w\.safetensors' is not a readable safetensors file \(its header is not JSON",
    ),
    ("npz_unused_3gib_array_never_read", npz_unused_3gib, 0, r"^$", validated_ok),
    (
        "factory_limit_1e9",
        factory_limit_1e9,
        2,
        r"factory '.*:endless' yields more than 16\.0 MiB after \d+ samples \(limit: 1000000000\)",
        peak_within_budget,
    ),
    ("sweep_alias_bomb", alias_bomb_sweep, 2, r"sweep\.yaml: expands to more than 100000 values"),
    (
        "sweep_grid_of_a_million",
        grid(6),
        2,
        r"vary makes 1,000,000 combinations; a sweep builds at most 1,000 variants",
    ),
    (
        "sweep_tpe_over_1e10_never_enumerated",
        grid(10, search={"method": "tpe", "trials": 3}, resources={"num_cpus": 64}),
        2,
        r"sweep\.yaml: resources\.num_cpus: 64, but this machine has \d+ CPUs",
    ),
    (
        "sweep_num_cpus_64_on_this_machine",
        lambda e: sweep(e, {"validate.max_drift": [0.01]}, resources={"num_cpus": 64}),
        2,
        r"sweep\.yaml: resources\.num_cpus: 64, but this machine has \d+ CPUs; no build could ever start",
    ),
    (
        "simplify_chain_past_max_nodes",
        simplify_chain,
        0,
        r"stage '(optimizer|rewrite)' skipped: \d+ nodes, over max_nodes 100",
    ),
    (
        "explain_manifest_missing_key",
        manifest_text('{"name": "h"}', "explain"),
        2,
        r"manifest\.json: artifacts: Field required",
    ),
    ("bench_manifest_not_json", manifest_text('{"name": ', "bench"), 2, r"manifest\.json' is not valid JSON \(line 1"),
    ("explain_samples_0", option("explain", "--samples", 0), 2, r"argument --samples: 0 is outside 1\.\.1000000"),
    ("bench_runs_0", option("bench", "--runs", 0), 2, r"argument --runs: 0 is outside 1\.\.1000000"),
    ("bench_batch_minus_4", option("bench", "--batch", -4), 2, r"argument --batch: -4 is outside 1\.\.65536"),
    (
        "npy_header_claims_3_6_tib",
        npy_claims_3_6_tib,
        2,
        r"array 'x' declares \[1000000000000\] float32 = 3\.6 TiB; a data source over 8\.0 GiB is refused",
    ),
    (
        "config_30_gb_never_read",
        config_30gb,
        2,
        r"config: '.*c\.yaml' is 30\.0 GiB; a config file over 1\.0 MiB is refused",
    ),
    (
        "out_dir_removed_mid_build",
        remove_out_mid_build,
        2,
        r"--out: '.*out' was removed, moved or replaced \(by a link\?\) while the build ran",
    ),
    (
        "sweep_file_duplicate_keys",
        duplicate_in("sweep"),
        2,
        r"sweep\.yaml: not valid YAML \(line 3\): duplicate key 'base'",
    ),
    (
        "sweep_base_duplicate_keys",
        duplicate_in("base"),
        2,
        r"base\.yaml: not valid YAML \(line 1\): duplicate key 'name'",
    ),
    ("factory_subpackage_change_rebuilds", subpackage_change, 0, r"wrote .*manifest\.json"),
]

from tests.pipeline.hostile_commands_own import OWN23_ROWS  # noqa: E402  (the rows issue 23 does not name)

__all__ = ["ISSUE23_ROWS", "OWN23_ROWS"]
