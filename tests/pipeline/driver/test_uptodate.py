"""No-op rebuilds: `deployc build` of unchanged inputs reports "up to date" without importing torch or touching the
out dir; any change to what the build depends on, a damaged output, or --no-cache gives a full build."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from deployc.cli import main
from deployc.core.config import load_config
from deployc.driver.uptodate import KEY_FILE, build_key, stale_reason
from deployc.storage.outdir import LOCK_NAME
from tests.conftest import write

MODEL = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "models" / "tiny.py", MODEL)
    write(tmp_path / "models" / "helpers.py", "SCALE = 1\n")
    from deployc.data.sources import digits_arrays

    x, y = digits_arrays("test")
    np.savez(tmp_path / "data.npz", image=x[:64], labels=y[:64], calib_image=x[64:128])
    config = {
        "name": "tiny",
        "model": {"factory": "models/tiny.py:make", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}]},
        "data": {"validation": "data.npz", "metric": "top1", "skip_checks": ["chance"]},  # an untrained model
        "targets": {"onnx": {"precision": ["fp32"]}},
        "validate": {"max_drift": 1.0, "latency_runs": 2},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def _build(project: Path, *extra: str) -> int:
    return main(["build", str(project / "tiny.yaml"), "--out", str(project / "out"), "--quiet", *extra])


def _stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def test_unchanged_inputs_are_up_to_date_without_heavy_imports_or_writes(project):
    assert _build(project) == 0
    out = project / "out"
    before = _stamps(out)
    assert KEY_FILE in before
    code = (
        "import sys; from deployc.cli import main; "
        f"rc = main(['build', {str(project / 'tiny.yaml')!r}, '--out', {str(out)!r}, '--json']); "
        "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules); "
        "print(rc, heavy, file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stderr.strip().splitlines()[-1] == "0 []"  # exit 0, and torch/onnx/numpy were never imported
    summary = json.loads(run.stdout)
    assert summary["up_to_date"] is True and summary["status"] == "passed"
    assert _stamps(out) == before  # nothing written, not even the lock file


def _change(project: Path, change: str) -> None:
    out = project / "out"
    if change == "factory source":
        (project / "models" / "tiny.py").write_text(MODEL.replace("manual_seed(0)", "manual_seed(1)"))
    elif change == "neighbour module":
        (project / "models" / "helpers.py").write_text("SCALE = 2\n")
    elif change == "new module":
        (project / "models" / "extra.py").write_text("UNUSED = 1\n")
    elif change == "config":
        raw = yaml.safe_load((project / "tiny.yaml").read_text())
        raw["validate"]["max_drift"] = 0.5
        (project / "tiny.yaml").write_text(yaml.safe_dump(raw))
    elif change == "data file":
        with np.load(project / "data.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["image"] = arrays["image"][::-1].copy()
        np.savez(project / "data.npz", **arrays)
    elif change == "artifact damaged":
        with open(out / "onnx" / "tiny.fp32.onnx", "ab") as f:
            f.write(b"\0")
    elif change == "report deleted":
        (out / "report.md").unlink()
    else:
        (out / "notes.txt").write_text("mine")


@pytest.mark.parametrize(
    "change",
    ["factory source", "neighbour module", "config", "data file", "artifact damaged", "report deleted"],
)
def test_any_change_rebuilds(project, change):
    assert _build(project) == 0
    out = project / "out"
    config = load_config(project / "tiny.yaml")
    key = build_key(config)
    assert stale_reason(out, key) is None
    _change(project, change)
    new_key = build_key(load_config(project / "tiny.yaml"))
    reason = stale_reason(out, new_key)
    assert reason is not None
    assert (new_key != key) == (change in ("factory source", "neighbour module", "config", "data file"))
    manifest_before = (out / "manifest.json").stat().st_mtime_ns
    assert _build(project) == 0
    assert (out / "manifest.json").stat().st_mtime_ns != manifest_before  # a full build ran
    assert stale_reason(out, new_key) is None  # and the out dir is up to date again


def test_no_cache_builds_even_when_up_to_date(project):
    assert _build(project) == 0
    stamp = (project / "out" / "manifest.json").stat().st_mtime_ns
    assert _build(project) == 0
    assert (project / "out" / "manifest.json").stat().st_mtime_ns == stamp
    assert _build(project, "--no-cache") == 0
    assert (project / "out" / "manifest.json").stat().st_mtime_ns != stamp


def test_a_symlinked_artifact_or_a_held_lock_is_never_up_to_date(project, tmp_path_factory):
    assert _build(project) == 0
    out = project / "out"
    key = build_key(load_config(project / "tiny.yaml"))
    fd = os.open(out / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running build holds it
        assert stale_reason(out, key) == "another build is writing it"
    finally:
        os.close(fd)
    artifact = out / "onnx" / "tiny.fp32.onnx"
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "copy.onnx"
    elsewhere.write_bytes(artifact.read_bytes())
    artifact.unlink()
    artifact.symlink_to(elsewhere)  # same bytes, but deployc does not follow links it did not write
    assert stale_reason(out, key) == "onnx/tiny.fp32.onnx changed since the build"


def test_a_failed_build_stays_failed_when_up_to_date(project):
    raw = yaml.safe_load((project / "tiny.yaml").read_text())
    raw["validate"]["max_drift"] = 0.0  # int8 always moves the outputs a little: its cosine gate fails
    raw["data"]["metric"] = "cosine"
    raw["targets"] = {"onnx": {"precision": ["fp32", "int8"]}}
    (project / "tiny.yaml").write_text(yaml.safe_dump(raw))
    assert _build(project) == 3
    stamp = (project / "out" / "manifest.json").stat().st_mtime_ns
    assert _build(project) == 3  # the stored build's status, not a blanket 0
    assert (project / "out" / "manifest.json").stat().st_mtime_ns == stamp


def test_an_onnx_models_external_data_is_part_of_the_key(tmp_path):
    import onnx
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 8), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", 1, ["batch", 8])],
        [helper.make_tensor_value_info("y", 1, ["batch", 8])],
        [weight],
    )
    onnx.save(
        helper.make_model(graph), tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0
    )
    (tmp_path / "unrelated.bin").write_bytes(b"not the model's")
    raw = {"model": {"onnx": "m.onnx"}, "data": {"validation": "data.npz"}}
    key = build_key(load_config(raw, base_dir=tmp_path))
    (tmp_path / "unrelated.bin").write_bytes(b"changed")
    assert build_key(load_config(raw, base_dir=tmp_path)) == key  # only the files the model names count
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.bin").read_bytes()[::-1])
    assert build_key(load_config(raw, base_dir=tmp_path)) != key


def test_a_labels_file_is_part_of_the_key(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    raw = {"model": {"onnx": "m.onnx", "labels": "labels.txt"}, "data": {"validation": "data.npz"}}
    key = build_key(load_config(raw, base_dir=tmp_path))
    (tmp_path / "labels.txt").write_text("dog\ncat\n")  # every artifact carries the labels: a rebuild must notice
    assert build_key(load_config(raw, base_dir=tmp_path)) != key


def test_the_python_api_has_the_clis_up_to_date_check_and_exit_codes(project, capsys):
    import deployc

    out = project / "out"
    first = deployc.build(project / "tiny.yaml", out=out, quiet=True)
    assert first.exit_code == 0 and first.up_to_date is False and first.artifacts
    before = _stamps(out)
    again = deployc.build(str(project / "tiny.yaml"), out=out, quiet=True)
    assert again.up_to_date is True and again.exit_code == 0 and again.manifest == first.manifest
    assert _stamps(out) == before  # nothing ran, nothing was written
    forced = deployc.build(project / "tiny.yaml", out=out, cache=False)  # like --no-cache: every pass again
    assert forced.up_to_date is False and _stamps(out)["manifest.json"] != before["manifest.json"]
    assert f"deployc: building {out} again: every pass runs again (--no-cache)" in capsys.readouterr().err
    with pytest.raises(TypeError):
        deployc.build(project / "tiny.yaml", out, True)  # keyword arguments only, each one typed and named


@pytest.mark.parametrize(
    "change, said",
    [
        ("factory source", "models/tiny.py changed"),
        ("neighbour module", "models/helpers.py changed"),
        ("new module", "models/extra.py is new (a module beside a factory, which may import it)"),
        ("config", "config key validate.max_drift: 1.0 -> 0.5"),
        ("data file", "data.npz changed"),
        ("report deleted", "report.md changed since the build"),
        ("foreign file", "notes.txt was not written by deployc"),
    ],
)
def test_every_rebuild_says_why(project, monkeypatch, capsys, change, said):
    monkeypatch.chdir(project)  # paths in the reasons are relative to the current folder
    assert _build(project) == 0
    out = project / "out"
    _change(project, change)
    capsys.readouterr()
    code = main(["build", str(project / "tiny.yaml"), "--out", str(out), "--force"])
    assert code == 0
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith(f"deployc: building {out} again: ") and said in first_line


def test_a_key_file_records_what_the_key_hashed(project):
    assert _build(project) == 0
    stored = json.loads((project / "out" / KEY_FILE).read_text())
    key = build_key(load_config(project / "tiny.yaml"))
    assert stored["key"] == key and stored["inputs"] == json.loads(json.dumps(key.inputs))
    assert {Path(p).name for p, _ in stored["inputs"]["files"]} == {"tiny.py", "helpers.py", "data.npz"}
