"""A build folder without manifest.json but with a killed build's staging folder: the commands that read build
folders (explain, bench, package) name what that build had finished, read as untrusted data (no link followed,
malformed files ignored), and still refuse the folder (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployc.commands.build_dir import read_manifest
from deployc.errors import UsageError

PROGRESS = {
    "complete": False,
    "artifacts": [
        {"target": "onnx", "precision": "fp32", "gate": {"status": "pass"}, "path": "onnx/m.onnx", "sha256": "0"},
        {"target": "tflite", "precision": "int8", "gate": {"status": "error"}},
    ],
}


def test_the_missing_manifest_error_names_what_the_killed_build_finished(tmp_path: Path):
    staging = tmp_path / ".deployc-staging-abc"
    staging.mkdir()
    (staging / "progress.json").write_text(json.dumps(PROGRESS))
    with pytest.raises(UsageError) as err:
        read_manifest(tmp_path)
    assert "no manifest.json" in str(err.value)
    assert ".deployc-staging-abc/progress.json lists 2 finished artifact(s) (onnx/fp32 pass, tflite/int8 error;" in (
        str(err.value)
    )
    assert "1 with a file and sha256" in str(err.value)


@pytest.mark.parametrize("kind", ["link", "garbage", "not-a-list"])
def test_a_hostile_progress_file_is_ignored_not_followed(tmp_path: Path, kind: str):
    staging = tmp_path / ".deployc-staging-abc"
    staging.mkdir()
    secret = tmp_path.parent / f"{tmp_path.name}-outside.json"
    secret.write_text(json.dumps(PROGRESS))
    if kind == "link":
        (staging / "progress.json").symlink_to(secret)
    elif kind == "garbage":
        (staging / "progress.json").write_bytes(b"\\xff{not json")
    else:
        (staging / "progress.json").write_text(json.dumps({"artifacts": 3}))
    with pytest.raises(UsageError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == f"{tmp_path}: no manifest.json (not a finished deployc build)"
