"""`deployc sweep` on a real local Ray with 2 CPUs: variants are ordinary builds (byte for byte), a shared
prune + fine-tune runs once, dead workers are retried, failures stay in their variant, --resume verifies hashes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from deployc.cli import main
from deployc.storage.files import file_digest as sha256
from deployc.sweep.runner import start_ray
from tests.conftest import write

TINY = """
import os
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x):
        if self.training:  # one line per training step, whichever process runs it
            with open(HERE / "train_steps.log", "a") as f:
                f.write(f"{os.getpid()}\\n")
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make():
    torch.manual_seed(0)
    return Tiny()


def crash_once():
    marker = HERE / "crashed.once"
    if not marker.exists():
        marker.write_text("")
        os._exit(9)  # the worker dies mid-build, as if killed
    return make()


def crash_always():
    os._exit(9)


def broken():
    raise ValueError("no such checkpoint")
"""


def base_config(passes: list) -> dict:
    return {
        "name": "tiny",
        "model": {"factory": "tiny.py:make", "inputs": [{"name": "image", "shape": ["batch", 1, 8, 8]}]},
        "data": {
            "validation": {"kind": "digits", "split": "test", "limit": 200},
            "train": {"kind": "digits", "split": "train", "limit": 256},
            "calibration": {"kind": "digits", "split": "train", "limit": 64},
            "skip_checks": ["chance"],  # an untrained model: its top1 is chance level
        },
        "passes": passes,
        "targets": {"onnx": {"precision": ["fp32"]}},
        "quantize": {"samples": 64},
        "validate": {"max_drift": 0.05, "latency_runs": 2},
    }


PREFIX = [{"prune.structured": {"ratio": 0.5}}, {"finetune": {"epochs": 2, "lr": 0.01}}]


@pytest.fixture(scope="module")
def ray_local():
    """The embedded local Ray every sweep starts by default, with 2 CPUs and its files in a temporary folder."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit in 107 characters
    assert start_ray(None, temp, num_cpus=2)
    assert ray.cluster_resources()["CPU"] == 2
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sweep")
    write(folder / "tiny.py", TINY)
    write(folder / "base.yaml", json.dumps(base_config(PREFIX)))
    write(folder / "sweep.yaml", "base: base.yaml\nvary:\n  targets.onnx.precision: [[fp32], [int8]]\n")
    return folder


def steps(project: Path) -> int:
    log = project / "train_steps.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def build_files(out: Path) -> dict[str, str]:
    """sha256 of manifest.json and of every artifact it names: what must be byte-identical."""
    manifest = json.loads((out / "manifest.json").read_text())
    files = ["manifest.json"] + [a["path"] for a in manifest["artifacts"] if a["path"]]
    return {f: sha256(out / f) for f in files}


@pytest.fixture(scope="module")
def shared_sweep(ray_local, project: Path) -> dict:
    """Two variants that share prune + fine-tune, then differ in precision."""
    code = main(["sweep", str(project / "sweep.yaml"), "--out", str(project / "out"), "--quiet"])
    summary = json.loads((project / "out" / "sweep.json").read_text())
    return {"code": code, "summary": summary, "steps": steps(project)}


def test_shared_prefix_runs_once_and_variants_equal_plain_builds(shared_sweep, project: Path):
    summary = shared_sweep["summary"]
    assert shared_sweep["code"] == 0
    assert [v["status"] for v in summary["variants"]] == ["passed", "passed"]
    assert summary["executor"]["name"] == "ray" and summary["executor"]["cpus"] == 2
    (prefix,) = summary["prefixes"]
    assert prefix["pipeline"] == "prune.structured{ratio=0.5} | finetune{epochs=2,lr=0.01}"
    assert sorted(prefix["variants"]) == sorted(v["id"] for v in summary["variants"])

    # a plain `deployc build` of the int8 variant's resolved config, saved beside the base config
    int8 = next(v for v in summary["variants"] if v["overrides"]["targets.onnx.precision"] == ["int8"])
    sweep_out = project / "out" / int8["out"]
    config = json.loads((sweep_out / "manifest.json").read_text())["config"]
    write(project / "int8.yaml", json.dumps(config))
    before = steps(project)
    plain = ["build", str(project / "int8.yaml"), "--out", str(project / "plain"), "--quiet", "--no-cache"]
    assert main(plain) == 0  # no pass cache: export and quantization run again here
    one_finetune = steps(project) - before

    # the sweep trained exactly as much as one build does, not once per variant
    assert one_finetune > 0 and shared_sweep["steps"] == one_finetune
    assert build_files(sweep_out) == build_files(project / "plain")


def test_outputs_list_every_variant(shared_sweep, project: Path):
    summary = shared_sweep["summary"]
    out = project / "out"
    front = {(p["variant"], p["precision"]) for p in summary["pareto"]}
    chosen = summary["chosen"]
    assert (chosen["variant"], chosen["precision"]) in front  # default objective: the fastest passing artifact
    assert chosen["latency_ms"] == min(p["latency_ms"] for p in summary["pareto"])
    for v in summary["variants"]:
        (art,) = v["artifacts"]
        assert art["gate"] == "pass" and art["bytes"] == (out / v["out"] / art["path"]).stat().st_size
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert sorted(c.get("name") for c in suite.iter("testcase")) == sorted(v["id"] for v in summary["variants"])
    html = (out / "report.html").read_text()
    assert "★ chosen" in html and html.count("data:image/png;base64") == 2


def test_resume_skips_verified_variants_and_rebuilds_a_damaged_one(shared_sweep, project: Path):
    out = project / "out"
    ids = [v["id"] for v in shared_sweep["summary"]["variants"]]
    hashes = {i: build_files(out / i) for i in ids}
    before = steps(project)
    assert main(["sweep", str(project / "sweep.yaml"), "--out", str(out), "--resume", "--quiet"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert [v["resumed"] for v in summary["variants"]] == [True, True]
    assert steps(project) == before and {i: build_files(out / i) for i in ids} == hashes

    damaged = out / ids[0] / shared_sweep["summary"]["variants"][0]["artifacts"][0]["path"]
    damaged.write_bytes(damaged.read_bytes() + b"\0")
    assert main(["sweep", str(project / "sweep.yaml"), "--out", str(out), "--resume", "--quiet"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    assert {v["id"]: v["resumed"] for v in summary["variants"]} == {ids[0]: False, ids[1]: True}
    assert steps(project) > before  # the rebuilt variant ran its own prune + fine-tune: no other variant needs it
    assert build_files(out / ids[0]) == hashes[ids[0]]  # and came out the same as before


def test_dead_workers_are_retried_and_failures_stay_in_their_variant(ray_local, tmp_path: Path):
    write(tmp_path / "tiny.py", TINY)
    write(tmp_path / "base.yaml", json.dumps(base_config([])))
    factories = ["tiny.py:make", "tiny.py:crash_once", "tiny.py:crash_always", "tiny.py:broken"]
    write(
        tmp_path / "sweep.yaml", json.dumps({"base": "base.yaml", "vary": {"model.factory": factories}, "retries": 1})
    )
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    by_factory = {v["overrides"]["model.factory"]: v for v in summary["variants"]}
    assert by_factory["tiny.py:make"]["status"] == "passed"
    assert by_factory["tiny.py:crash_once"]["status"] == "passed"  # Ray ran it again on a new worker
    dead = by_factory["tiny.py:crash_always"]
    assert dead["status"] == "failed" and dead["exit_code"] is None and "worker died" in dead["reason"]
    assert not (out / dead["out"] / "manifest.json").exists()
    broken = by_factory["tiny.py:broken"]
    assert broken["status"] == "failed" and broken["exit_code"] == 2
    assert "model.factory" in broken["reason"] and "no such checkpoint" in broken["reason"]
    for v in (by_factory["tiny.py:make"], by_factory["tiny.py:crash_once"]):
        manifest = json.loads((out / v["out"] / "manifest.json").read_text())
        assert all(sha256(out / v["out"] / a["path"]) == a["sha256"] for a in manifest["artifacts"])
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("4", "2", "0")
    assert summary["counts"] == {"variants": 4, "passed": 2, "failed": 2, "resumed": 0}


def test_a_failed_shared_prefix_fails_every_variant_that_needs_it(ray_local, tmp_path: Path):
    write(tmp_path / "tiny.py", TINY)
    write(
        tmp_path / "base.yaml",
        json.dumps(dict(base_config(PREFIX), model={**base_config([])["model"], "factory": "tiny.py:crash_always"})),
    )
    sweep = {"base": "base.yaml", "vary": {"targets.onnx.precision": [["fp32"], ["int8"]]}, "retries": 0}
    write(tmp_path / "sweep.yaml", json.dumps(sweep))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--quiet"]) == 3  # nothing qualifies
    summary = json.loads((out / "sweep.json").read_text())
    (prefix,) = summary["prefixes"]
    assert prefix["status"] == "failed" and "WorkerCrashedError" in prefix["error"]
    for v in summary["variants"]:
        assert v["status"] == "failed" and v["reason"].startswith(f"shared prefix '{prefix['pipeline']}' failed")
    assert summary["chosen"] is None and summary["pareto"] == []


def test_bad_variant_config_exits_2_before_anything_runs(tmp_path: Path, capsys):
    write(tmp_path / "tiny.py", TINY)
    write(tmp_path / "base.yaml", json.dumps(base_config(PREFIX)))
    write(tmp_path / "sweep.yaml", "base: base.yaml\nvary:\n  passes[0].prune.structured.ratio: [0.3, 1.5]\n")
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sweep.yaml" in err and "passes[0].prune.structured.ratio=1.5" in err and "ratio" in err
    assert not out.exists()


def test_address_runs_on_a_running_cluster_and_json_keeps_stdout_clean(ray_local, tmp_path: Path):
    import ray

    address = ray.get_runtime_context().gcs_address  # the cluster this test process started: "running" for a CLI
    write(tmp_path / "tiny.py", TINY)
    write(tmp_path / "base.yaml", json.dumps(base_config([])))
    write(tmp_path / "sweep.yaml", json.dumps({"base": "base.yaml", "vary": {"quantize.samples": [32]}}))
    cli = Path(sys.executable).with_name("deployc")
    cmd = [str(cli), "sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"), "--address", address]
    proc = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # nothing but the summary on stdout
    assert summary["executor"] == {"name": "ray", "version": ray.__version__, "nodes": 1, "cpus": 2, "address": address}
    assert [v["status"] for v in summary["variants"]] == ["passed"]


def test_tpe_asks_optuna_for_one_variant_at_a_time(ray_local, tmp_path: Path):
    write(tmp_path / "tiny.py", TINY)
    write(tmp_path / "base.yaml", json.dumps(base_config([])))
    sweep = {
        "base": "base.yaml",
        "vary": {"quantize.samples": [16, 32, 64], "targets.onnx.precision": [["fp32"], ["int8"]]},
        "search": {"method": "tpe", "trials": 3, "seed": 1},
        "objective": {"minimize": "bytes"},
    }
    write(tmp_path / "sweep.yaml", json.dumps(sweep))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--max-parallel", "1", "--quiet"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    ids = [v["id"] for v in summary["variants"]]
    assert len(ids) == len(set(ids)) == 3 and all(v["status"] == "passed" for v in summary["variants"])
    smallest = min((a["bytes"], v["id"]) for v in summary["variants"] for a in v["artifacts"])
    assert (summary["chosen"]["bytes"], summary["chosen"]["variant"]) == smallest


def test_unreachable_address_exits_2_in_seconds(tmp_path: Path, capsys):
    write(tmp_path / "tiny.py", TINY)
    write(tmp_path / "base.yaml", json.dumps(base_config([])))
    write(tmp_path / "sweep.yaml", json.dumps({"base": "base.yaml", "vary": {"quantize.samples": [32]}}))
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--address", "127.0.0.1:1"]) == 2
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in capsys.readouterr().err
    assert not out.exists()
