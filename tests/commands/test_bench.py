"""deployc bench: artifacts and baselines measured side by side; ratios are to torch eager."""

from __future__ import annotations

import json

import pytest

from deployc.cli import main
from deployc.commands.bench import add_size_ratios, run_bench
from deployc.commands.bench_baselines import EAGER, QSTATIC
from deployc.errors import UsageError


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    """The demo build's config as a file: bench on a build folder whose config names a factory needs it."""
    import yaml

    from tests.conftest import digits_config

    path = tmp_path_factory.mktemp("config") / "digits.yaml"
    path.write_text(yaml.safe_dump(digits_config(targets={"onnx": {"precision": ["fp32", "int8"]}})))
    return path


@pytest.fixture(scope="module")
def bench(demo_build, demo_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = run_bench(demo_build.out_dir, out=out, runs=5, batch=8, min_seconds=0.05, quiet=True, config=demo_config)
    return result, out / "bench"


def test_every_artifact_and_baseline_is_measured(bench, demo_build):
    result, _ = bench
    rows = {r["name"]: r for r in result["rows"]}
    assert {EAGER, "ort fp32 (plain export)", QSTATIC, "onnx/fp32", "onnx/int8"} <= set(rows)
    for name in (EAGER, "ort fp32 (plain export)", QSTATIC, "onnx/fp32", "onnx/int8"):
        r = rows[name]
        assert "skipped" not in r, r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["iqr_ms"] >= 0 and r["throughput"] > 0 and isinstance(r["unstable"], bool)
    # the artifacts' metric, re-measured here through Target.infer, matches what the build's gate measured
    for a in demo_build.manifest["artifacts"]:
        assert rows[f"{a['target']}/{a['precision']}"]["metric"] == pytest.approx(a["metrics"]["metric"])
        assert rows[f"{a['target']}/{a['precision']}"]["bytes"] == a["bytes"]
    assert rows[EAGER]["drift"] == 0.0  # eager is the reference itself


def test_ratios_are_taken_within_rounds(bench):
    result, _ = bench
    rows = {r["name"]: r for r in result["rows"]}
    eager, int8 = rows[EAGER], rows["onnx/int8"]
    latency = result["rounds"]["latency"]
    assert latency["rounds"] >= 5 and latency["per_round"] >= 1 and len(result["load_average"]) == 2
    assert eager["x_eager_p50"] == 1.0 and rows[QSTATIC]["x_qstatic_p50"] == 1.0
    # the ratio is the median of per-round ratios: it need not equal the ratio of overall medians, but it is
    # the one the rounds recorded
    assert int8["x_eager_p50"] == pytest.approx(latency["ratios"]["onnx/int8"]["median"], abs=1e-4)
    assert int8["x_eager_size"] == pytest.approx(int8["bytes"] / eager["bytes"])
    assert int8["x_eager_size"] < 1  # int8 weights are smaller than the fp32 state_dict


def test_outputs_written_and_table_complete(bench):
    result, out = bench
    saved = json.loads((out / "bench.json").read_text())
    assert [r["name"] for r in saved["rows"]] == [r["name"] for r in result["rows"]]
    table = result["table"]
    assert len(table["rows"]) == len(result["rows"])
    assert all(len(r) == len(table["header"]) for r in table["rows"])
    assert "×eager p50" in (out / "bench.md").read_text()


def test_size_ratios_skip_rows_that_did_not_run():
    rows = [
        {"name": EAGER, "bytes": 1000},
        {"name": "x", "bytes": 250},
        {"name": "y", "bytes": 100, "skipped": "no runtime"},
    ]
    add_size_ratios(rows)
    assert rows[1]["x_eager_size"] == 0.25
    assert "x_eager_size" not in rows[2]


def test_folder_without_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="manifest.json"):
        run_bench(tmp_path, quiet=True)
    with pytest.raises(UsageError, match="no such"):
        run_bench(tmp_path / "missing.yaml", quiet=True)


def test_cli_json_goes_to_stdout(demo_build, demo_config, tmp_path, capsys):
    code = main(
        [
            "bench",
            str(demo_build.out_dir),
            "--config",
            str(demo_config),
            "--out",
            str(tmp_path),
            "--no-baselines",
            "--runs",
            "3",
            "--batch",
            "4",
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in printed["rows"]] == ["onnx/fp32", "onnx/int8"]


def test_config_is_built_then_benched_and_the_report_shows_the_table(tmp_path):
    import yaml

    from tests.conftest import digits_config

    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump(digits_config()))
    out = tmp_path / "out"
    result = run_bench(config, out=out, baselines=False, runs=3, batch=4, min_seconds=0.05, quiet=True)
    assert [r["name"] for r in result["rows"]] == ["onnx/fp32"]
    assert (out / "manifest.json").is_file() and (out / "bench" / "bench.json").is_file()
    assert result["table"]["title"] in (out / "bench" / "report.html").read_text(encoding="utf-8")
    assert result["table"]["title"] not in (out / "report.html").read_text(encoding="utf-8")  # the build's own
