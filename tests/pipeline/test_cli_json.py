"""--json always prints one JSON object on stdout, with `error` and the exit code when the command failed;
validate-config recognises a sweep file; `cache prune` says what it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployc.cli import main
from tests.conftest import digits_config, write


def _one_object(out: str) -> dict:
    (obj,) = [json.loads(out)]  # the whole stdout is one JSON document
    return obj


@pytest.mark.parametrize(
    "argv, code, error",
    [
        (["build", "missing.yaml"], 2, "config file 'missing.yaml' not found"),
        (["build", "c.yaml", "--no-such-flag"], 2, "unrecognized arguments: --no-such-flag"),
        (["build"], 2, "give a CONFIG file, or --model and --data"),
        (["validate-config", "bad.yaml"], 2, "unknown key (did you mean 'targets'?)"),
        (["bench", "nowhere"], 2, "nowhere: no such config file or build folder"),
        (["cache", "prune", "--max-size", "-3G"], 2, "--max-size"),
    ],
)
def test_json_on_error_is_one_object_with_the_error_and_exit_code(tmp_path, monkeypatch, capsys, argv, code, error):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "c.yaml", json.dumps(digits_config()))
    write(tmp_path / "bad.yaml", json.dumps(dict(digits_config(), target={"onnx": {}})))
    assert main([*argv, "--json"]) == code
    captured = capsys.readouterr()
    obj = _one_object(captured.out)
    assert obj["exit_code"] == code and error in obj["error"]
    assert error in captured.err  # the person reading the terminal sees it too


def test_json_on_an_internal_error(tmp_path, monkeypatch, capsys):
    def crash(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("deployc.driver.build.build", crash)  # a bug in deployc, as the CLI meets it
    path = write(tmp_path / "c.yaml", json.dumps(digits_config()))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--json"]) == 1
    obj = _one_object(capsys.readouterr().out)
    assert obj["exit_code"] == 1 and obj["error"] == "ZeroDivisionError: boom"


def _sweep(tmp_path: Path, vary: dict) -> Path:
    write(tmp_path / "base.yaml", json.dumps(digits_config()))
    return write(tmp_path / "sweep.yaml", yaml.safe_dump({"base": "base.yaml", "vary": vary}))


def test_validate_config_checks_a_sweep_file_as_one(tmp_path, capsys):
    path = _sweep(tmp_path, {"quantize.calibration": ["minmax", "entropy"], "validate.max_drift": [0.01, 0.02]})
    assert main(["validate-config", str(path), "--json"]) == 0
    obj = _one_object(capsys.readouterr().out)
    assert obj["kind"] == "sweep" and obj["variants"] == 4 and obj["error"] is None
    bad = _sweep(tmp_path, {"quantize.calibration": ["minmax", "entropi"]})
    assert main(["validate-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "sweep.yaml: variant" in err and "entropi" in err  # the sweep's own error, not build-config errors


def test_cache_prune_says_what_it_did(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEPLOYC_CACHE_DIR", str(tmp_path / "cache"))
    path = write(tmp_path / "c.yaml", json.dumps(digits_config()))
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert main(["cache", "prune"]) == 0
    assert "nothing to prune" in capsys.readouterr().out  # the tiny cache is within the default 1GB
    assert main(["cache", "prune", "--max-size", "0", "--json"]) == 0
    obj = _one_object(capsys.readouterr().out)
    assert obj["removed"] > 0 and obj["entries"] == 0 and obj["freed"] > 0 and obj["limit"] == 0
