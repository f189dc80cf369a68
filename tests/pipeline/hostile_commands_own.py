"""Rows of tests/pipeline/test_hostile.py for the commands around `build` that issue 23 does not name: the same
defect classes (untrusted build dirs and markers, links, FIFOs and devices, declared sizes, unbounded numbers)
tried on every other command and on the Python API."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

from tests.pipeline.hostile_commands import (
    EVIL,
    api,
    built,
    edit_manifest,
    fifo,
    fifo_after_build,
    grid,
    nothing_ran,
    npz_member,
    sparse,
    sweep,
    sweep_files,
    variant_ids,
    victim,
    weights,
)
from tests.pipeline.hostile_support import (
    Env,
    config,
    data_npz,
    ok_build,
    onnx_cfg,
    onnx_model,
    snapshot,
    victim_intact,
    write_config,
)


def marker_staging(env: Env) -> None:
    """A marker whose staging list names a folder outside: a build would remove it as a killed build's leftovers."""
    ok_build(env)
    (env.tmp / "keep").mkdir()
    (env.tmp / "keep" / "photo.jpg").write_text("jpeg")
    marker = env.out / ".deployc-out.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "staging": ["../keep"]}))
    env.out_existed = True
    env.build(config(env.tmp, targets={"onnx": {"precision": ["fp16"]}}))


def keep_intact(env: Env) -> None:
    assert (env.tmp / "keep" / "photo.jpg").read_text() == "jpeg"


def legacy_absolute(env: Env) -> None:
    """No marker; a manifest lists the victim by absolute path with its true hash (adoption would own it)."""
    import hashlib

    target = victim(env)
    env.out.mkdir()
    manifest = {
        "manifest_version": 1,
        "artifacts": [{"path": str(target), "sha256": hashlib.sha256(b"precious").hexdigest()}],
    }
    (env.out / "manifest.json").write_text(json.dumps(manifest))
    env.before = snapshot(env.out)
    env.out_existed = True
    data_npz(env.tmp)
    env.build(config(env.tmp), "--force")


def special_in_out(name: str, kind: str) -> Any:
    def run(env: Env) -> None:
        env.out.mkdir()
        env.out_existed = True
        if kind == "fifo":
            fifo(env.out / name)
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(env.out / name))
            sock.close()
        data_npz(env.tmp)
        env.build(config(env.tmp))

    return run


def manifest_change(change: Any, command: str = "explain", *flags: Any) -> Any:
    def run(env: Env) -> None:
        cfg = built(env)
        edit_manifest(env, change)
        extra = ["--config", cfg, "--no-baselines"] if command == "bench" else []
        env.cli(command, env.out, *extra, *flags)

    return run


def artifact_link_outside(env: Env) -> None:
    built(env)
    artifact = env.out / "onnx" / "h.fp32.onnx"
    (env.tmp / "copy.onnx").write_bytes(artifact.read_bytes())
    artifact.unlink()
    artifact.symlink_to(env.tmp / "copy.onnx")  # same bytes, but not inside the build dir
    env.cli("explain", env.out)


def artifact_changed(env: Env) -> None:
    built(env)
    artifact = env.out / "onnx" / "h.int8.onnx"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    env.cli("explain", env.out)


def manifest_special(kind: str) -> Any:
    def run(env: Env) -> None:
        built(env)
        path = env.out / "manifest.json"
        path.unlink()
        if kind == "fifo":
            fifo(path)
        elif kind == "huge":
            sparse(env, "out/manifest.json", 1 << 30)
        else:
            path.write_text(kind)
        env.cli("explain", env.out)

    return run


def explain_data_only(env: Env) -> None:
    built(env)
    env.cli("explain", env.out, "--samples", 16, "--top", 2)


def explained(env: Env) -> None:
    assert "per-layer error: onnx/h.int8.onnx vs onnx/h.fp32.onnx on data.calibration" in env.stdout, env.stdout


def bench_folder(kind: str) -> Any:
    """bench on a build dir whose bench/ is a link to a user's folder, or holds a user's file."""

    def run(env: Env) -> None:
        cfg = built(env)
        mine = env.tmp / "mine"
        mine.mkdir()
        (mine / "bench.md").write_text("mine")
        if kind == "link":
            (env.out / "bench").symlink_to(mine)
        else:
            (env.out / "bench").mkdir()
            (env.out / "bench" / "bench.md").write_text("mine")
        env.cli("bench", env.out, "--config", cfg, "--no-baselines", "--runs", 1, "--batch", 1)

    return run


def mine_intact(env: Env) -> None:
    assert [p.name for p in (env.tmp / "mine").iterdir()] == ["bench.md"]
    assert (env.tmp / "mine" / "bench.md").read_text() == "mine"


def bench_then_build(env: Env) -> None:
    """build, bench the build dir (its outputs go to bench/), build again: still up to date (issue 28's report)."""
    ok_build(env)
    assert env.code == 0, env.err
    path = write_config(env.tmp, config(env.tmp))
    assert env.cli("bench", env.out, "--config", path, "--no-baselines", "--runs", 1, "--batch", 1) == 0, env.err
    env.build(config(env.tmp))


def bench_config_twice(env: Env) -> None:
    data_npz(env.tmp)
    path = write_config(env.tmp, config(env.tmp))
    env.cli("bench", path, "--config", path)


def bench_metric_code(env: Env) -> None:
    """The stored config names an ONNX model (data) but a metric callable (code): bench refuses, explain would not."""
    built(env)
    (env.tmp / "evil.py").write_text(EVIL)
    edit_manifest(
        env,
        lambda m: m["config"].update(
            model={"onnx": "out/onnx/h.fp32.onnx"}, data={**m["config"]["data"], "metric": "evil.py:gen"}
        ),
    )
    env.cli("bench", env.out, "--no-baselines")


def shorthand_factory(env: Env) -> None:
    built(env)
    (env.tmp / "evil.py").write_text(EVIL)
    edit_manifest(env, lambda m: m["config"]["data"].update(validation="evil.py:gen", calibration="evil.py:gen"))
    env.cli("explain", env.out)


def cache_planted(env: Env) -> None:
    """A cache deployc made (a first build), then someone plants a record-less pair and links every entry folder could
    take to a user's folder: prune keeps the pair, the next build never writes through the links."""
    ok_build(env)
    passes = env.tmp / "cache" / "passes"
    for folder in [p for p in passes.iterdir() if p.is_dir()]:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    (env.tmp / "mine").mkdir()
    for i in range(256):
        (passes / f"{i:02x}").symlink_to(env.tmp / "mine")
    env.out_name = "out2"
    env.build(config(env.tmp, targets={"onnx": {"precision": ["fp16"]}}))


def mine_empty(env: Env) -> None:
    assert not any((env.tmp / "mine").iterdir())


def cache_record_less(env: Env) -> None:
    ok_build(env)
    folder = env.tmp / "cache" / "passes" / ("f" * 2)
    folder.mkdir(exist_ok=True)
    (folder / f"{'f' * 64}.onnx").write_text("the user's model")
    (folder / f"{'f' * 64}.json").write_text('{"sha256": "mine"}')
    env.cli("cache", "prune", "--max-size", "0", "--json")


def record_less_kept(env: Env) -> None:
    folder = env.tmp / "cache" / "passes" / "ff"
    assert (folder / f"{'f' * 64}.onnx").read_text() == "the user's model"
    assert json.loads(env.stdout)["entries"] == 1  # deployc's own entries are gone, the unproven pair stays


def cache_marker_fifo(env: Env) -> None:
    (env.tmp / "cache" / "passes").mkdir(parents=True)
    fifo(env.tmp / "cache" / "passes" / ".deployc-cache.json")
    ok_build(env)


def step_summary_link(env: Env) -> None:
    (env.tmp / "summary.md").symlink_to(victim(env))
    env.mp.setenv("GITHUB_STEP_SUMMARY", str(env.tmp / "summary.md"))
    ok_build(env)


def external_data_fifo(env: Env) -> None:
    from onnx import TensorProto, helper

    init = helper.make_tensor("w", TensorProto.FLOAT, [8], [1.0] * 8)
    init.data_location = TensorProto.EXTERNAL
    del init.float_data[:]
    init.external_data.add(key="location", value="w.bin")
    path = onnx_model(env, nodes=[helper.make_node("Mul", ["x", "w"], ["y"])], initializers=[init])
    fifo(env.tmp / "w.bin")
    env.validate(onnx_cfg(env, path))


def safetensors_header(header: dict | None, length: int | None = None) -> Any:
    def path(env: Env) -> str:
        raw = json.dumps(header or {}).encode()
        file = env.tmp / "w.safetensors"
        file.write_bytes(struct.pack("<Q", length if length is not None else len(raw)) + raw + b"\0" * 64)
        return str(file)

    return weights(path)


def npz_truncated(env: Env) -> None:
    np.savez(env.tmp / "data.npz", labels=np.arange(64) % 5)
    npz_member(env.tmp / "data.npz", "x.npy", {"descr": "<f4", "fortran_order": False, "shape": (64, 8)}, b"\0" * 40)
    env.validate(config(env.tmp))


def sweep_special(kind: str) -> Any:
    def run(env: Env) -> None:
        sweep_files(env, {"validate.max_drift": [0.01]})
        path = env.tmp / "sweep.yaml"
        path.unlink()
        if kind == "fifo":
            fifo(path)
        else:
            sparse(env, "sweep.yaml", 5 << 30)
        env.cli("sweep", path, "--out", env.out)

    return run


def sweep_variant_file(env: Env) -> None:
    path = sweep_files(env, {"validate.max_drift": [0.01, 0.02]})
    env.out.mkdir()
    (env.out / ".deployc-out.json").write_text(json.dumps({"written_by": "deployc", "files": [], "staging": []}))
    (env.out / variant_ids(env)[1]).write_text("the user's notes")
    env.out_existed = True
    env.cli("sweep", path, "--out", env.out)


def ray_output_captured(env: Env) -> None:
    """The one real Ray run: a build that asks more memory than any node has is refused once Ray answers; Ray's own
    start-up lines stay out of the terminal."""
    sweep(env, {"validate.max_drift": [0.01]}, resources={"num_cpus": 1, "memory": 1 << 49})


def only_deployc_lines(env: Env) -> None:
    lines = [ln for ln in env.err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("deployc") for ln in lines), env.err


def demo_into(setup: str) -> Any:
    def run(env: Env) -> None:
        env.out.mkdir()
        env.out_existed = True
        if setup == "user files":
            (env.out / "notes.txt").write_text("mine")
            env.before = snapshot(env.out)
        else:
            (env.out / ".deployc.lock").symlink_to(victim(env))
        env.cli("demo", "--out", env.out)

    return run


def out_untouched(env: Env) -> None:
    assert snapshot(env.out) == env.before


def api_build(setup: str) -> Any:
    def run(env: Env) -> None:
        from deployc import build

        data_npz(env.tmp)
        if setup == "marker":
            env.out.mkdir()
            (env.out / ".deployc-out.json").write_text(
                json.dumps({"written_by": "deployc", "files": ["/etc/hostname"]})
            )
            env.out_existed = True
            api(env, lambda: build(config(env.tmp), out=env.out, quiet=True))
        elif setup == "lock fifo":
            env.out.mkdir()
            env.out_existed = True
            fifo(env.out / ".deployc.lock")
            api(env, lambda: build(config(env.tmp), out=env.out, quiet=True))
        else:
            path = fifo(env.tmp / "c.yaml")
            api(env, lambda: build(path, out=env.out, quiet=True))

    return run


def api_bench_batch(env: Env) -> None:
    from deployc.commands.bench import run_bench

    cfg = built(env)
    api(env, lambda: run_bench(env.out, config=cfg, batch=-4, quiet=True))


def api_explain_samples(env: Env) -> None:
    from deployc.commands.explain import layer_report

    built(env)
    api(env, lambda: layer_report(env.out, samples=0))


def artifact_not_onnx(env: Env) -> None:
    """A build dir whose fp32 artifact is garbage with a manifest that vouches for it (hashes match)."""
    import hashlib

    built(env)
    garbage = b"\xff" * 256
    (env.out / "onnx" / "h.fp32.onnx").write_bytes(garbage)
    sha = hashlib.sha256(garbage).hexdigest()
    edit_manifest(env, lambda m: m["artifacts"][0].update(sha256=sha, bytes=len(garbage)))
    env.cli("explain", env.out)


def nested_manifest(env: Env) -> None:
    built(env)
    (env.out / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    env.cli("explain", env.out)


OWN23_ROWS = [
    (
        "marker_staging_entry_outside",
        marker_staging,
        2,
        r"lists '\.\./keep', which is not a file inside the out dir",
        keep_intact,
    ),
    (
        "legacy_manifest_absolute_artifact",
        legacy_absolute,
        2,
        r"already holds files|manifest\.json' was not written by deployc",
        victim_intact,
    ),
    (
        "out_marker_is_a_fifo",
        special_in_out(".deployc-out.json", "fifo"),
        2,
        r"\.deployc-out\.json' is a FIFO, not deployc's file",
    ),
    (
        "out_lock_is_a_socket",
        special_in_out(".deployc.lock", "socket"),
        2,
        r"\.deployc\.lock' is a socket, not deployc's file",
    ),
    ("out_report_is_a_fifo", special_in_out("report.md", "fifo"), 2, r"report\.md' is a FIFO, not deployc's file"),
    (
        "explain_artifact_path_dotdot",
        manifest_change(lambda m: m["artifacts"][0].update(path="../outside.onnx")),
        2,
        r"artifacts\[0\]\.path: '\.\./outside\.onnx' points outside",
    ),
    (
        "explain_artifact_absolute_path",
        manifest_change(lambda m: m["artifacts"][1].update(path="/etc/hostname.onnx")),
        2,
        r"artifacts\[1\]\.path: '/etc/hostname\.onnx' points outside",
    ),
    ("explain_artifact_link_outside", artifact_link_outside, 2, r"h\.fp32\.onnx' is a symbolic link"),
    (
        "explain_artifact_changed",
        artifact_changed,
        2,
        r"artifacts\[1\]\.path: 'onnx/h\.int8\.onnx' does not match the size and sha256",
    ),
    ("explain_manifest_fifo", manifest_special("fifo"), 2, r"manifest\.json' is not a regular file \(a FIFO"),
    (
        "explain_manifest_1_gib",
        manifest_special("huge"),
        2,
        r"manifest\.json' is 1\.0 GiB; a manifest over 64\.0 MiB is refused",
    ),
    ("explain_manifest_top_level_list", manifest_special("[]"), 2, r"manifest\.json: the top level is not a mapping"),
    ("explain_manifest_nested_100000", nested_manifest, 2, r"manifest\.json' is nested too deeply"),
    (
        "explain_manifest_artifacts_not_a_list",
        manifest_change(lambda m: m.update(artifacts={"a": 1})),
        2,
        r"manifest\.json: artifacts: Input should be a valid list",
    ),
    (
        "explain_manifest_shape_not_a_list",
        manifest_change(lambda m: m["artifacts"][0]["inputs"][0].update(shape="batch")),
        2,
        r"manifest\.json: artifacts\[0\]\.inputs\[0\]\.shape: Input should be a valid list",
    ),
    (
        "explain_remedies_malformed",
        manifest_change(lambda m: m["artifacts"][1]["details"].update(remedies={"trial_log": []})),
        2,
        r"the int8 artifact's details\.remedies is not what deployc writes \(KeyError",
    ),
    ("explain_data_only_config_runs", explain_data_only, 0, r"^$", explained),
    (
        "explain_shorthand_factory_refused",
        shorthand_factory,
        2,
        r"names Python code \(data\.validation: 'evil\.py:gen'\)",
        nothing_ran,
    ),
    (
        "explain_top_0",
        lambda e: (built(e), e.cli("explain", e.out, "--top", 0)),
        2,
        r"argument --top: 0 is outside 1\.\.100000",
    ),
    (
        "explain_samples_not_a_number",
        lambda e: (built(e), e.cli("explain", e.out, "--samples", "64k")),
        2,
        r"argument --samples: '64k' is not a whole number",
    ),
    (
        "bench_batch_a_billion",
        lambda e: (built(e), e.cli("bench", e.out, "--batch", 10**9)),
        2,
        r"argument --batch: 1000000000 is outside 1\.\.65536",
    ),
    ("bench_config_with_a_config", bench_config_twice, 2, r"--config: goes with a BUILD_DIR"),
    ("bench_folder_is_a_link", bench_folder("link"), 2, r"out/bench' is a symbolic link", mine_intact),
    (
        "bench_folder_holds_a_user_file",
        bench_folder("file"),
        2,
        r"out/bench/bench\.md' was not written by deployc",
        mine_intact,
    ),
    ("bench_then_build_still_up_to_date", bench_then_build, 0, r"up to date"),
    (
        "bench_metric_callable_refused",
        bench_metric_code,
        2,
        r"names Python code \(data\.metric: 'evil\.py:gen'\)",
        nothing_ran,
    ),
    (
        "bench_artifact_path_dotdot",
        manifest_change(lambda m: m["artifacts"][1].update(path="onnx/../../x.onnx"), "bench"),
        2,
        r"artifacts\[1\]\.path: 'onnx/\.\./\.\./x\.onnx' points outside",
    ),
    (
        "cache_entry_folders_planted_as_links",
        cache_planted,
        0,
        r"cannot write to the pass cache .* is not a folder deployc made",
        mine_empty,
    ),
    ("cache_prune_keeps_record_less_pair", cache_record_less, 0, r"^$", record_less_kept),
    (
        "cache_marker_is_a_fifo",
        cache_marker_fifo,
        0,
        r"pass cache '.*passes' is unusable \(it holds files and no deployc cache marker",
    ),
    (
        "cache_info_user_folder",
        lambda e: (
            e.mp.setenv("DEPLOYC_CACHE_DIR", str(e.tmp)),
            (e.tmp / "passes").mkdir(),
            (e.tmp / "passes" / "x.onnx").write_text("mine"),
            e.cli("cache", "info"),
        ),
        2,
        r"is not a deployc cache",
    ),
    (
        "github_step_summary_link",
        step_summary_link,
        2,
        r"GITHUB_STEP_SUMMARY: '.*summary\.md' is a symbolic link",
        victim_intact,
    ),
    (
        "data_replaced_by_fifo_after_a_build",
        fifo_after_build(lambda e: e.tmp / "data.npz"),
        2,
        r"data\.validation: '.*data\.npz' is not a regular file \(a FIFO",
    ),
    ("onnx_external_data_fifo", external_data_fifo, 2, r"external data: '.*w\.bin' is not a regular file \(a FIFO"),
    (
        "safetensors_header_claims_3_6_tib",
        safetensors_header({"fc.weight": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}),
        2,
        r"tensor 'fc\.weight' declares \[1000000, 1000000\] F32 = 3\.6 TiB at bytes 0\.\.4000000000000 of 64 bytes",
    ),
    ("safetensors_header_length_2_pow_60", safetensors_header(None, 1 << 60), 2, r"declares a 1024\.0 PiB header in a"),
    (
        "npz_array_truncated",
        npz_truncated,
        2,
        r"array 'x' declares \[64, 8\] float32 = 2\.0 KiB but holds 40 bytes; the file is damaged",
    ),
    ("explain_artifact_not_onnx_hash_vouched", artifact_not_onnx, 2, r"h\.fp32\.onnx: not a readable ONNX model \("),
    ("sweep_file_fifo", sweep_special("fifo"), 2, r"sweep: '.*sweep\.yaml' is not a regular file \(a FIFO"),
    (
        "sweep_file_5_gib",
        sweep_special("huge"),
        2,
        r"sweep: '.*sweep\.yaml' is 5\.0 GiB; a sweep file over 1\.0 MiB is refused",
    ),
    (
        "sweep_trials_over_cap",
        lambda e: sweep(e, {"validate.max_drift": [0.01, 0.02]}, search={"method": "random", "trials": 5000}),
        2,
        r"search\.trials: Input should be less than or equal to 1000",
    ),
    (
        "sweep_random_million_without_trials",
        grid(6, search={"method": "random"}),
        2,
        r"vary makes 1,000,000 combinations.*set search\.trials",
    ),
    ("sweep_variant_folder_is_a_file", sweep_variant_file, 2, r"is a file where the variant's build folder goes"),
    (
        "sweep_max_parallel_0",
        lambda e: sweep(e, {"validate.max_drift": [0.01]}, "--max-parallel", 0),
        2,
        r"argument --max-parallel: 0 is outside 1\.\.4096",
    ),
    (
        "sweep_memory_beyond_every_node",
        ray_output_captured,
        2,
        r"resources\.memory: 5\.6295e\+14, but the largest Ray node has",
        only_deployc_lines,
    ),
    (
        "demo_into_user_files",
        demo_into("user files"),
        2,
        r"already holds files deployc did not write \(notes\.txt\)",
        out_untouched,
    ),
    ("demo_lock_is_a_link", demo_into("lock link"), 2, r"\.deployc\.lock' is a symbolic link", victim_intact),
    (
        "api_build_marker_lists_etc",
        api_build("marker"),
        2,
        r"lists '/etc/hostname', which is not a file inside the out dir",
    ),
    ("api_build_lock_fifo", api_build("lock fifo"), 2, r"\.deployc\.lock' is a FIFO, not deployc's file"),
    ("api_build_config_fifo", api_build("config fifo"), 2, r"config: '.*c\.yaml' is not a regular file \(a FIFO"),
    ("api_bench_batch_minus_4", api_bench_batch, 2, r"batch: -4 is outside 1\.\.65536"),
    ("api_explain_samples_0", api_explain_samples, 2, r"samples: 0 is outside 1\.\.1e\+06"),
]

__all__ = ["OWN23_ROWS"]
