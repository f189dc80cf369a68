"""Size, drift and batch-1 runtime latency of every artifact of examples/full.yaml (onnx + tflite + tensorrt).

    .venv/bin/python benchmarks/targets_digits.py [--out /tmp/full-bench] [--runs 300]

Builds the config once, then times each artifact on its own runtime (onnxruntime CPU EP, the LiteRT
interpreter, TensorRT or its onnxruntime proxy) through the same Target.infer the validation gate uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployc.compiler.registry import get_target  # noqa: E402
from deployc.core.config import load_config  # noqa: E402
from deployc.core.timing import interleaved  # noqa: E402
from deployc.data.sources import digits_arrays  # noqa: E402
from deployc.driver.build import build  # noqa: E402
from deployc.outputs.report import human_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "examples" / "full.yaml"))
    parser.add_argument("--out", default="/tmp/deployc-targets-bench")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    config = load_config(args.config)
    result = build(config, out=args.out, quiet=True)
    sample = {config.model.inputs[0].name: digits_arrays("test")[0][:1]}
    print(
        f"build: {result.manifest['status']} (exit {result.exit_code}), "
        f"reference top1 {result.manifest['reference']['value']:.4f} on {result.manifest['reference']['samples']} samples"
    )
    targets, runners = {}, {}
    for art in result.artifacts:
        if art.target not in targets:
            cls = get_target(art.target)
            targets[art.target] = cls(cls.Options.model_validate(config.targets[art.target] or {}))
        runners[art.label] = lambda t=targets[art.target], a=art: t.infer(a, sample)
    rounds = interleaved(runners, rounds=10, per_round=max(1, args.runs // 10), warmup=20)
    print(
        f"\n{args.runs} batch-1 runs per artifact in interleaved rounds; load average {rounds.load_before:.1f} "
        f"before, {rounds.load_after:.1f} after"
    )
    print(
        "\n| target | precision | runtime | size | top1 | drift | agreement | max abs err | ms p50 | ms IQR | ms p90 | note |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for art in result.artifacts:
        targets[art.target].close(art)
        t = rounds.times[art.label]
        p50, iqr, p90 = t.median, t.iqr, rounds.percentile(art.label, 90)
        m = art.metrics
        note = art.details.get("engine") or ("integer-only" if art.details.get("npu", {}).get("integer_only") else "")
        print(
            f"| {art.target} | {art.precision} | {art.runtime} | {human_bytes(art.path.stat().st_size)} | "
            f"{m['metric']:.4f} | {m['drift'] * 100:+.2f}% | {m.get('agreement', float('nan')):.4f} | "
            f"{m['max_abs_err']:.3g} | {p50:.3f} | {iqr:.3f} | {p90:.3f} | {note} |"
        )


if __name__ == "__main__":
    main()
