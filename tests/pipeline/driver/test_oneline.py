"""The one-line start: `deployc build --model FILE.py:fn --data D.npz --target onnx:fp32,int8 --out DIR` builds a
model of one's own without a config, saves the config as DIR/deployc.yaml, and that file is the same build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployc.cli import main
from deployc.driver.oneline import parse_input, parse_targets
from deployc.errors import UsageError
from tests.conftest import write
from tests.tiny_mobile import tiny_project


@pytest.fixture
def project(tmp_path: Path, tiny_weights: bytes) -> Path:
    return tiny_project(tmp_path, tiny_weights, 96)


def _oneline(project: Path, out: Path, *extra: str) -> int:
    argv = ["build", "--model", str(project / "nets" / "tiny.py") + ":make", "--data", str(project / "digits.npz")]
    argv += ["--weights", str(project / "nets" / "tiny.safetensors")]
    return main([*argv, "--target", "onnx:fp32,int8", "--max-drift", "1", "--out", str(out), "--quiet", *extra])


def _stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}


def test_one_line_builds_and_its_saved_config_is_the_same_build(project, monkeypatch):
    out = project / "out"
    assert _oneline(project, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(a["precision"], a["gate"]["status"]) for a in manifest["artifacts"]] == [
        ("fp32", "pass"),
        ("int8", "pass"),
    ]
    saved = (out / "deployc.yaml").read_text()
    assert "factory: ../nets/tiny.py:make" in saved and "validation: ../digits.npz" in saved  # relative to OUT
    assert "shape: [batch, 1, 8, 8]" in saved  # the input was read from the npz
    assert "# model:" in saved and "deployc build" in saved.splitlines()[0]  # commented, says how it was made
    # the saved config rebuilds into another folder: the same manifest, byte for byte
    again = project / "again"
    assert main(["build", str(out / "deployc.yaml"), "--out", str(again), "--quiet"]) == 0
    assert (again / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    # built from OUT/deployc.yaml without --out: its own folder, already up to date, nothing written
    before = _stamps(out)
    monkeypatch.chdir(project)
    assert main(["build", "out/deployc.yaml", "--quiet"]) == 0
    assert _oneline(project, out) == 0  # the same one-line command: up to date too
    assert _stamps(out) == before


def test_a_saved_config_edited_by_hand_is_never_replaced_by_the_flags(project, capsys):
    out = project / "out"
    assert _oneline(project, out) == 0
    config = out / "deployc.yaml"
    config.write_text(config.read_text().replace("max_drift: 1.0", "max_drift: 0.5"))
    assert _oneline(project, out) == 2
    assert "was edited since deployc wrote it" in capsys.readouterr().err
    assert "max_drift: 0.5" in config.read_text()
    assert main(["build", str(config), "--quiet"]) == 0  # built from the file: kept, and saved with the build
    assert "max_drift: 0.5" in config.read_text()
    assert json.loads((out / "manifest.json").read_text())["budget"]["max_drift"] == 0.5


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "nets/tiny.py:make", "--data", "digits"], "--input: a factory model needs its inputs"),
        (["--model", "model.pkl", "--data", "digits"], "--model: 'model.pkl' is not FILE.py:callable"),
        (["--model", "m.onnx", "--weights", "w.pt", "--data", "digits"], "--weights go with a factory"),
        (["--model", "nets/tiny.py:make", "--input", "image:batch,1,8,8:complex", "--data", "digits"], "dtype"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_and_leave_nothing(project, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(project)
    assert main(["build", *flags, "--out", "out"]) == 2
    assert message in capsys.readouterr().err
    assert not (project / "out").exists()  # the folder made for the config's relative paths is gone again


def test_input_and_target_flags_parse():
    assert parse_input("image:batch,3,32,32") == {"name": "image", "shape": ["batch", 3, 32, 32]}
    assert parse_input("ids:1x128:int64") == {"name": "ids", "shape": [1, 128], "dtype": "int64"}
    assert parse_input("sr:[]") == {"name": "sr", "shape": []}
    with pytest.raises(UsageError, match="NAME:SHAPE"):
        parse_input("image")
    assert parse_targets(["onnx:int8", "onnx:fp32,int8", "tflite"]) == {
        "onnx": {"precision": ["int8", "fp32"]},
        "tflite": {},
    }
    assert parse_targets(None) == {"onnx": {"precision": ["fp32", "int8"]}}


def test_a_config_with_one_line_precisions_is_refused(project, capsys):
    config = write(project / "c.yaml", "model: {onnx: m.onnx}\ndata: {validation: digits}\n")
    assert main(["build", str(config), "--target", "onnx:int8"]) == 2
    assert "NAME:PRECISION is for the one-line start" in capsys.readouterr().err


def test_a_one_line_build_folder_is_read_with_its_own_paths_and_names_its_saved_config(project, monkeypatch):
    from deployc.commands.build_dir import config_for, read_manifest

    out = project / "out"
    assert _oneline(project, out) == 0
    with pytest.raises(UsageError, match=r"--config .*out/deployc\.yaml"):  # a factory: the hint names the file
        config_for(out, read_manifest(out), None, model=True)
    onnx_out = project / "from-onnx"  # an ONNX model names no code: its stored config is used, paths and all
    argv = ["build", "--model", str(out / "onnx" / "tiny.fp32.onnx"), "--data", str(project / "digits.npz")]
    assert main([*argv, "--target", "onnx:fp32", "--max-drift", "1", "--out", str(onnx_out), "--quiet"]) == 0
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths resolve against the build folder, not the current one
    cfg = config_for(onnx_out, read_manifest(onnx_out), None, model=True)
    assert cfg.resolve(cfg.model.onnx).resolve() == (out / "onnx" / "tiny.fp32.onnx").resolve()
    assert cfg.resolve(cfg.data.validation.path).resolve() == (project / "digits.npz").resolve()
