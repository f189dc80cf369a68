"""all-MiniLM-L6-v2 teacher vs its distilled 3-layer student, fp32 and dynamic int8, all as ONNX on
onnxruntime's CPU EP in one process: params, file size, batch-1 latency, and both embedding metrics
(cosine to the teacher, Spearman of pairwise similarities) on the held-out pydoc sentences.

    .venv/bin/python benchmarks/distill_minilm.py --student /tmp/d2

--student is the out dir of `deployc build examples/distill_minilm.yaml` (built first when it has no
manifest); the teacher's ONNX artifacts go through the same lowering (a build of the model with no passes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deployc.core.config import load_config  # noqa: E402
from deployc.core.ort import session  # noqa: E402
from deployc.core.timing import median_ms  # noqa: E402
from deployc.driver.build import build  # noqa: E402
from deployc.examples import minilm  # noqa: E402


def built(config: Path, out: Path, **changes: object) -> dict:
    """The manifest of `config` (with top-level `changes`) built into `out`, reusing a finished build."""
    if not (out / "manifest.json").is_file():
        cfg = load_config(config)
        build(cfg.model_copy(update=changes) if changes else cfg, out=out, quiet=True)
    return json.loads((out / "manifest.json").read_text())


def latency_ms(sess, feed: dict[str, np.ndarray], runs: int) -> float:
    return median_ms(lambda: sess.run(None, feed), runs, warmup=5)


def main() -> None:
    import onnxruntime as ort
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, default=Path("/tmp/d2"), help="out dir of the distill_minilm build")
    ap.add_argument("--teacher", type=Path, default=Path("/tmp/d2-teacher"), help="out dir for the teacher's artifacts")
    ap.add_argument("--runs", type=int, default=50, help="timed batch-1 runs per artifact (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (1: fair on a shared machine)")
    args = ap.parse_args()

    config = ROOT / "examples" / "distill_minilm.yaml"
    student = built(config, args.student)
    teacher = built(
        config, args.teacher, name="minilm-teacher", passes=[], targets={"onnx": {"precision": ["fp32", "dynamic"]}}
    )
    distill = next(p for p in student["passes"] if p["name"] == "distill")["metrics"]

    texts = [s for s in minilm.sentences() if minilm.is_heldout(s)]
    data = minilm.tokenize(texts)
    with torch.no_grad():
        ref = minilm.teacher()(*(torch.from_numpy(data[k]) for k in ("input_ids", "attention_mask"))).numpy()
    feed1 = {k: v[:1] for k, v in data.items()}

    rows = []
    for who, manifest, out, params in (
        ("teacher (6 layers)", teacher, args.teacher, distill["teacher_params"]),
        ("student (3 layers)", student, args.student, distill["student_params"]),
    ):
        for art in (a for a in manifest["artifacts"] if a["target"] == "onnx"):
            sess = session(out / art["path"], args.threads)
            emb = np.concatenate(
                [sess.run(None, {k: v[i : i + 64] for k, v in data.items()})[0] for i in range(0, len(texts), 64)]
            )
            rows.append(
                [
                    who,
                    art["precision"],
                    f"{params:,}",
                    f"{art['bytes'] / 2**20:.1f}",
                    f"{latency_ms(sess, feed1, args.runs):.2f}",
                    f"{minilm.embedding_cosine([emb], ref):.4f}",
                    f"{minilm.pairwise_spearman([emb], ref):.4f}",
                ]
            )
    header = [
        "model",
        "precision",
        "params",
        "onnx MB",
        f"ms (batch 1, seq {minilm.SEQ_LEN}, {args.threads} thread)",
        "cosine to teacher",
        "Spearman pairwise sims",
    ]
    print(f"held-out sentences: {len(texts)} (pydoc_data.topics); onnxruntime {ort.__version__}, CPUExecutionProvider")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
