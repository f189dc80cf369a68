"""A build killed from outside before it publishes (SIGKILL, the OOM killer acting for another process) leaves, in
its staging folder, progress.json: the artifacts it had finished, with their gates and hashes (outputs/progress.py);
a finished build publishes no progress.json, and the next build removes the killed one's staging folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from deployc.storage.files import file_digest
from tests.conftest import digits_config, write

# top-1 accuracy that kills its own process once the build has recorded one finished artifact: a kill at a known
# point (the int8 artifact's validation), with no timing involved
KILLER = """
import glob, json, os, signal
import numpy as np

def top1_or_kill(outputs, labels):
    for progress in glob.glob(os.path.join(os.environ["KILL_OUT"], ".deployc-staging-*", "progress.json")):
        if json.load(open(progress))["artifacts"]:
            os.kill(os.getpid(), signal.SIGKILL)
    return float((np.argmax(outputs[0], axis=1) == labels).mean())

top1_or_kill.needs_labels = True
"""


def test_a_killed_build_leaves_what_it_had_validated_with_hashes_and_the_next_build_publishes_none(tmp_path: Path):
    write(tmp_path / "killer.py", KILLER)
    config = digits_config(targets={"onnx": {"precision": ["fp32", "int8"]}}, validate={"latency_runs": 1})
    config["data"]["metric"] = "killer.py:top1_or_kill"
    config["base_dir"] = str(tmp_path)
    path = write(tmp_path / "c.yaml", json.dumps(config))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deployc.cli", "build", str(path), "--out", str(out), "--quiet"]
    env = {**os.environ, "DEPLOYC_CACHE_DIR": str(tmp_path / "cache"), "KILL_OUT": str(out)}
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    (staging,) = out.glob(".deployc-staging-*")
    progress = json.loads((staging / "progress.json").read_text())
    assert progress["complete"] is False
    (fp32,) = progress["artifacts"]  # int8 was being validated when the process died
    assert (fp32["target"], fp32["precision"], fp32["gate"]["status"]) == ("onnx", "fp32", "pass")
    assert file_digest(staging / fp32["path"]) == fp32["sha256"] and fp32["path"] == "onnx/digits.fp32.onnx"
    assert fp32["metrics"]["samples"] == 450
    # the commands that read a build folder say what the killed build had finished, and still refuse it (exit 2)
    explain = subprocess.run(
        [sys.executable, "-m", "deployc.cli", "explain", str(out)], env=env, capture_output=True, text=True
    )
    assert explain.returncode == 2
    assert f"{staging.name}/progress.json lists 1 finished artifact(s) (onnx/fp32 pass" in explain.stderr

    env["KILL_OUT"] = str(tmp_path / "nowhere")
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert not list(out.glob(".deployc-staging-*")) and not (out / "progress.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["gate"]["status"] for a in manifest["artifacts"]] == ["pass", "pass"]
    assert "progress.json" not in (out / ".deployc-out.json").read_text()
