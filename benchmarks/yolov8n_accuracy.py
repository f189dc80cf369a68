"""YOLOv8n int8 accuracy, fast iteration on the zoo's data and config: which detections flip, the noise floor, and
where the int8 loss comes from (class branch cv3, box/DFL branch cv2, head tail, or backbone).

    DEPLOYC_ZOO_CACHE=/work/.zoo-cache nice -n 10 .venv/bin/python benchmarks/yolov8n_accuracy.py --out DIR

Each variant is one deployc build of the zoo's yolov8n config (same data.npz, same calibration samples, remedies
off) with the variant's quantize / target options; the builds share one pass cache so calibration runs once per
placement. For each int8 graph it prints the gate drift, the class-score cosine and box MAE against fp32 (anchors
where fp32's best class score > 0.1), and every detection that flips: its class, its score in both graphs
relative to the 0.25 threshold, and its box.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONF = 0.25  # metrics.detection_agreement's score threshold


def _head_nodes(proto, prefix: str, ops: set[str] | None = None) -> list[str]:
    return [n.name for n in proto.graph.node if n.name.startswith(prefix) and (ops is None or n.op_type in ops)]


def variants(proto) -> dict[str, dict]:
    """name -> {quantize: {...}, onnx: {...}}: the exclusion experiments of the diagnosis."""
    import yolov8n_ends as network_ends  # benchmarks/: the ends experiment, not a shipped remedy

    head = "/model.22/"
    convs = {"Conv"}
    last = [n for n in _head_nodes(proto, head, convs) if n.endswith(".2/Conv") or "dfl" in n]
    cls_last = [n for n in last if "/cv3." in n]
    box_last = [n for n in last if "/cv2." in n or "dfl" in n]
    tail = [n.name for n in proto.graph.node if n.name.startswith(head) and n.op_type != "Conv" and "/cv" not in n.name]
    cv3 = _head_nodes(proto, head + "cv3")
    cv2 = _head_nodes(proto, head + "cv2") + _head_nodes(proto, head + "dfl")

    def blocks(ids) -> list[str]:
        return [n.name for i in ids for n in proto.graph.node if n.name.startswith(f"/model.{i}/")]

    return {
        "default": {"precision": ["fp16", "int8"]},
        "stem + tail float (the ends trial)": {"quantize": {"exclude": network_ends.ends(proto)}},
        "tail float": {"quantize": {"exclude": tail}},
        "tail + last convs float": {"quantize": {"exclude": tail + last}},
        "tail + cls last convs float": {"quantize": {"exclude": tail + cls_last}},
        "tail + box last convs float": {"quantize": {"exclude": tail + box_last}},
        "cv3 (class branch) float": {"quantize": {"exclude": cv3 + tail}},
        "cv2 (box branch) float": {"quantize": {"exclude": cv2 + tail}},
        "whole head float": {"quantize": {"exclude": cv2 + cv3 + tail}},
        "backbone float (model.0-9)": {"quantize": {"exclude": blocks(range(0, 10)) + tail}},
        "neck float (model.10-21)": {"quantize": {"exclude": blocks(range(10, 22)) + tail}},
        "stem float (model.0-2)": {"quantize": {"exclude": blocks(range(0, 3)) + tail}},
        "P3 path float (model.15-16, head .0)": {
            "quantize": {
                "exclude": blocks([15, 16])
                + tail
                + _head_nodes(proto, head + "cv2.0")
                + _head_nodes(proto, head + "cv3.0")
            }
        },
        "model.0 float": {"quantize": {"exclude": blocks([0])}},
        "model.0-1 float": {"quantize": {"exclude": blocks([0, 1])}},
        "model.0-1 + tail float": {"quantize": {"exclude": blocks([0, 1]) + tail}},
        "model.0-1 + tail float + percentile": {
            "quantize": {"exclude": blocks([0, 1]) + tail, "calibration": "percentile"}
        },
        "stem float + percentile": {"quantize": {"exclude": blocks(range(0, 3)) + tail, "calibration": "percentile"}},
        "stem float + percentile + trt fp32 rest": {
            "quantize": {"exclude": blocks(range(0, 3)) + tail, "calibration": "percentile"},
            "tensorrt": {"int8_high_precision": "fp32"},
        },
        "backbone float + trt fp32 rest": {
            "quantize": {"exclude": blocks(range(0, 10)) + tail},
            "tensorrt": {"int8_high_precision": "fp32"},
        },
        "no bias correction": {"quantize": {"bias_correction": False}},
        "percentile": {"quantize": {"calibration": "percentile"}},
        "entropy": {"quantize": {"calibration": "entropy"}},
    }


def detections(pred: np.ndarray) -> list[list[tuple[int, float, np.ndarray, int]]]:
    """Per image: (class, score, xyxy, anchor) after the metric's NMS (metrics._boxes, keeping the anchor index)."""
    from zoo_lib.metrics import _iou

    found = []
    for p in pred:
        scores = p[4:].max(0)
        keep = np.flatnonzero(scores > CONF)
        xywh, cls, sc = p[:4, keep].T, p[4:, keep].argmax(0), scores[keep]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        chosen: list[int] = []
        for i in np.argsort(-sc):
            if all(cls[j] != cls[i] or _iou(xyxy[i], xyxy[j]) < 0.5 for j in chosen):
                chosen.append(i)
        found.append([(int(cls[i]), float(sc[i]), xyxy[i], int(keep[i])) for i in chosen])
    return found


def flips(ref: np.ndarray, got: np.ndarray) -> list[str]:
    """Detections found by one graph and not matched (same class, IoU >= 0.5) by the other, with the other graph's
    score for that class at the same anchor."""
    from zoo_lib.metrics import _iou

    lines = []
    for i, (r, g) in enumerate(zip(detections(ref), detections(got))):
        for who, mine, other, other_pred in (("fp32 only", r, g, got[i]), ("int8 only", g, r, ref[i])):
            for c, s, b, j in mine:
                if any(oc == c and _iou(b, ob) >= 0.5 for oc, _, ob, _ in other):
                    continue
                lines.append(
                    f"img {i:2d} {who}: class {c} score {s:.3f} (other graph, same anchor {j}: "
                    f"{other_pred[4 + c, j]:.3f}) box {np.round(b).astype(int).tolist()}"
                )
    return lines


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    scores_r, scores_g = ref[:, 4:].astype(np.float64), got[:, 4:].astype(np.float64)
    cos = float((scores_r * scores_g).sum() / np.sqrt((scores_r**2).sum() * (scores_g**2).sum()))
    live = ref[:, 4:].max(1) > 0.1  # (images, anchors)
    box = np.abs(ref[:, :4] - got[:, :4]).transpose(0, 2, 1)[live]
    return {
        "class_cos": cos,
        "box_mae_px": float(box.mean()) if box.size else 0.0,
        "score_mae_live": float(np.abs(scores_r - scores_g).max(1)[live].mean()) if live.any() else 0.0,
        "anchors_live": int(live.sum()),
    }


ULTRALYTICS = "ultralytics==8.4.190"  # its wheel ships two photos of people


def photo_set(cache: Path, people: bool, n: int) -> dict[str, np.ndarray]:
    """datasets.yolo's images (same crops and mirrors, same seed) from the zoo's photos, plus photos of people."""
    import matplotlib
    from PIL import Image
    from zoo_lib import datasets, fetch, images

    extra: list[np.ndarray] = []
    if people:
        paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"]
        paths += [fetch.member(ULTRALYTICS, f"ultralytics/assets/{f}", cache) for f in ("bus.jpg", "zidane.jpg")]
        extra = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    photos = images.photos
    images.photos = lambda c: photos(c) + extra  # datasets.yolo reads its photos from here
    try:
        return datasets.yolo({}, cache, n=n, n_calib=n // 2)
    finally:
        images.photos = photos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="yolov8n-acc-")))
    ap.add_argument("--only", help="comma-separated variant names")
    ap.add_argument("--placement", default="onnxruntime", help="targets.onnx.int8_placement")
    ap.add_argument("--tensorrt", action="store_true", help="also the tensorrt int8 row")
    ap.add_argument(
        "--remedies", type=int, metavar="MAX_TRIALS", help="one build with remedies on (this many trials at most)"
    )
    ap.add_argument(
        "--people",
        action="store_true",
        help="the evaluation set with three more photos of people (NudeNet's FACE_* classes): matplotlib's Grace "
        "Hopper portrait and the ultralytics wheel's bus.jpg and zidane.jpg, crops and mirrors as in the zoo's set",
    )
    ap.add_argument("--n", type=int, default=48, help="validation images (calibration: half as many)")
    args = ap.parse_args(argv)

    import onnx
    import yaml
    import zoo
    from zoo_lib import catalog, fetch
    from zoo_lib.metrics import detection_agreement

    from deployc.core.config import load_config
    from deployc.core.ort import session
    from deployc.driver.build import build

    os.environ.setdefault("DEPLOYC_CACHE_DIR", str(args.out / "pass-cache"))
    if args.people or args.n != 48:  # written before zoo.prepare, which keeps a data.npz it finds
        (args.out / "yolov8n").mkdir(parents=True, exist_ok=True)
        np.savez(args.out / "yolov8n" / "data.npz", **photo_set(fetch.cache_dir(None), args.people, args.n))
    config_path = zoo.prepare(catalog.BY_NAME["yolov8n"], args.out, fetch.cache_dir(None))
    raw = yaml.safe_load(config_path.read_text())
    proto = onnx.load(raw["model"]["onnx"])
    x = np.load(config_path.parent / "data.npz")["images"]
    ref = np.concatenate(
        [session(raw["model"]["onnx"]).run(None, {"images": x[i : i + 8]})[0] for i in range(0, len(x), 8)]
    )
    n_ref = sum(len(d) for d in detections(ref))
    scores = np.concatenate([[s for _, s, _, _ in d] for d in detections(ref)])
    print(f"fp32: {n_ref} detections on {len(x)} images; scores {np.round(np.sort(scores), 3).tolist()}")
    print(f"fp32 anchors with best score in 0.25±0.05: {int((np.abs(ref[:, 4:].max(1) - CONF) < 0.05).sum())}\n")
    table = []
    chosen = variants(proto)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    if args.remedies:
        chosen = {f"remedies (max_trials {args.remedies})": {"remedies": {"max_trials": args.remedies}}}
    for name, change in chosen.items():
        cfg = dict(raw)
        cfg["quantize"] = {
            **raw.get("quantize", {}),
            "remedies": change.get("remedies", "off"),
            **change.get("quantize", {}),
        }
        targets = {
            "onnx": {
                "precision": change.get("precision", ["int8"]),
                "int8_placement": args.placement,
                **change.get("onnx", {}),
            }
        }
        if args.tensorrt:
            targets["tensorrt"] = {"precision": ["int8"], **change.get("tensorrt", {})}
        cfg["targets"] = targets
        cfg["validate"] = {**raw.get("validate", {}), "latency_runs": 1}
        t0, c0 = time.perf_counter(), time.process_time()
        out = args.out / "builds" / name.replace(" ", "_").replace("(", "").replace(")", "")
        result = build(load_config(cfg, base_dir=config_path.parent), out=out, quiet=True, force=True)
        secs = (time.perf_counter() - t0, time.process_time() - c0)
        for art in result.manifest["artifacts"]:
            if art.get("path") is None:
                continue
            path = out / art["path"]
            sess = session(path)
            got = np.concatenate([sess.run(None, {"images": x[i : i + 8]})[0] for i in range(0, len(x), 8)])
            row = {
                "variant": name,
                "row": f"{art['target']}/{art['precision']}",
                "drift": art["metrics"].get("drift"),
                "f1": detection_agreement([got], ref),
                **compare(ref, got),
                "cover": (art.get("details", {}).get("int8_coverage") or {}).get("macs"),
                "wall_s": round(secs[0], 1),
                "cpu_s": round(secs[1], 1),
            }
            table.append(row)
            print(json.dumps(row))
            for t in (art.get("details", {}).get("remedies") or {}).get("trial_log", []):
                print(f"    trial {t['trial']} {t['stage']}: {t['change']}: drift {t['drift']}, {t['gate']}")
            for line in flips(ref, got):
                print("   ", line)
    (args.out / "accuracy.json").write_text(json.dumps(table, indent=1))
    print("\n| variant | row | drift | class cos | box MAE px | int8 MACs |\n|---|---|---|---|---|---|")
    for r in table:
        cover = f"{r['cover']:.1%}" if isinstance(r["cover"], float) else "—"
        print(
            f"| {r['variant']} | {r['row']} | {r['drift']:+.4f} | {r['class_cos']:.4f} | {r['box_mae_px']:.3f} | {cover} |"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main())
