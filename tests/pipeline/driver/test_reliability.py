"""Release-pipeline guarantees: one build per out dir, kill -9 safety, byte-identical rebuilds, the pass cache."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from deployc.cli import main
from deployc.driver.build import build
from deployc.errors import UsageError
from deployc.storage.files import file_digest as sha256
from tests.conftest import digits_config, write


def _manifest_is_true(out: Path) -> bool:
    """The invariant: a manifest that exists names only complete files whose hashes match."""
    path = out / "manifest.json"
    if not path.exists():
        return True
    manifest = json.loads(path.read_text())
    return all(
        (out / a["path"]).is_file() and sha256(out / a["path"]) == a["sha256"]
        for a in manifest["artifacts"]
        if a["path"]
    )


def test_second_build_into_same_out_dir_is_refused(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".deployc.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running build holds
        held.write("4242")
        held.flush()
        with pytest.raises(UsageError, match=r"another deployc build \(pid 4242\) is writing to"):
            build(digits_config(), out=out, quiet=True)
    assert not (out / "manifest.json").exists()


def test_out_dir_that_cannot_be_created(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="--out: cannot create"):
        build(digits_config(), out=tmp_path / "file" / "out", quiet=True)
    with pytest.raises(UsageError, match="exists and is not a folder"):
        build(digits_config(), out=tmp_path / "file", quiet=True)


def test_kill_9_never_leaves_a_manifest_naming_bad_files(tmp_path: Path):
    config = write(
        tmp_path / "c.yaml",
        json.dumps(digits_config(targets={"onnx": {"precision": ["fp32", "int8"]}}, validate={"latency_runs": 200})),
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deployc.cli", "build", str(config), "--out", str(out), "--quiet"]
    env = {**os.environ, "DEPLOYC_CACHE_DIR": str(tmp_path / "cache")}
    assert subprocess.run(cmd, env=env).returncode == 0
    for delay in (0.3, 1.5, 3.0, 4.5):
        proc = subprocess.Popen(cmd, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _manifest_is_true(out), f"killed after {delay}s"
    assert subprocess.run(cmd, env=env).returncode == 0  # the next build completes
    assert _manifest_is_true(out) and (out / "manifest.json").exists()
    assert not list(out.glob(".staging-*"))


def test_same_inputs_give_byte_identical_artifacts_and_manifest(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DEPLOYC_CACHE_DIR", str(tmp_path / "cache"))
    cfg = digits_config(targets={"onnx": {"precision": ["fp32", "int8", "dynamic"]}})
    first = build(cfg, out=tmp_path / "a", quiet=True, cache=False)
    second = build(cfg, out=tmp_path / "b", quiet=True, cache=False)
    third = build(cfg, out=tmp_path / "c", quiet=True, cache=True)
    fourth = build(cfg, out=tmp_path / "d", quiet=True, cache=True)  # served from the cache
    manifest = (tmp_path / "a" / "manifest.json").read_bytes()
    for other in ("b", "c", "d"):
        assert (tmp_path / other / "manifest.json").read_bytes() == manifest
    assert [a["sha256"] for a in first.manifest["artifacts"]] == [a["sha256"] for a in second.manifest["artifacts"]]
    # no measured time in the manifest (the config's `quantize.remedies.max_seconds: null` is a setting, not one)
    assert "latency_ms" not in manifest.decode() and not re.search(r'seconds": [0-9]', manifest.decode())
    assert third.timings["cache"]["hits"] == 0 and fourth.timings["cache"]["hits"] >= 2
    assert json.loads((tmp_path / "d" / "timings.json").read_text())["cache"]["hits"] >= 2


def test_cache_commands(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYC_CACHE_DIR", str(tmp_path / "cache"))
    build(digits_config(), out=tmp_path / "out", quiet=True)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] >= 2 and info["bytes"] > 0
    assert main(["cache", "prune", "--max-size", "0", "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["entries"] == 0 and pruned["removed"] == info["entries"]
    assert main(["cache", "prune", "--max-size", "lots"]) == 2


def test_external_data_outside_model_folder_is_refused(tmp_path: Path, digits_onnx: Path):
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load(str(digits_onnx))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    folder = tmp_path / "models"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"))
    os.replace(folder / "weights.bin", tmp_path / "secret.bin")
    escaped = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for init in escaped.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(escaped, str(folder / "escape.onnx"))
    cfg = {"model": {"onnx": str(folder / "escape.onnx")}, "data": {"validation": "digits"}}
    with pytest.raises(UsageError, match=r"points at external data '../secret.bin' outside the model's folder"):
        build(cfg, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
