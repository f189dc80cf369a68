"""Real audio, offline: harmonic tones of known pitch (numpy) and English speech (espeak-ng), plus features."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from functools import cache
from pathlib import Path

import numpy as np

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A build step belongs in every release pipeline.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "The weather today is cloudy with a chance of rain in the late afternoon.",
    "Numbers like seven hundred and forty two are spoken slowly and clearly.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "Python is a programming language that lets you work quickly and integrate systems effectively.",
)
VOICES = ("en+m1", "en+m3", "en+m7", "en+f2", "en+f4", "en-us+m2", "en-us+f3", "en+Andy")
# speakers for speaker identification: VOICES and 16 more of espeak-ng's variants (`espeak-ng --voices=variant`)
SPEAKERS = VOICES + tuple(
    f"en+{v}"
    for v in ("f1", "f3", "f5", "m2", "m4", "m5", "m6", "m8", "Annie", "Alex", "Alicia", "belinda", "benjamin",
              "david", "linda", "steph")
)  # fmt: skip


def tone(freq: float, n: int, sr: int, rng: np.random.Generator, harmonics: int = 4, noise: float = 0.01) -> np.ndarray:
    """A harmonic tone (partials 1..harmonics, amplitude 1/k, random phases) with a little white noise."""
    t = np.arange(n) / sr
    x = sum(
        np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 2 * np.pi)) / k
        for k in range(1, harmonics + 1)
        if k * freq < sr / 2
    )
    x = 0.5 * x / np.max(np.abs(x))
    return (x + noise * rng.standard_normal(n)).astype(np.float32)


def have_espeak() -> str | None:
    """None when espeak-ng is on PATH, else why the speech models cannot get data."""
    return None if shutil.which("espeak-ng") else "espeak-ng is not installed (apt-get install -y espeak-ng)"


@cache
def speech(text: str, voice: str, sr: int = 16000, speed: int = 160) -> np.ndarray:
    """espeak-ng's rendering of `text` as float32 in [-1, 1] at `sr` Hz."""
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory(prefix="zoo-espeak-") as d:
        path = Path(d) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=60,
            # its audio library (libpulse) writes ~/.config/pulse even when it only writes a file: keep it in d
            env={**os.environ, "XDG_CONFIG_HOME": d, "PULSE_RUNTIME_PATH": d},
        )
        with wave.open(str(path)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, dtype=np.int16).astype(np.float64) / 32768.0
    g = np.gcd(sr, rate)
    return resample_poly(x, sr // g, rate // g).astype(np.float32)


def speech_many(jobs: list[tuple[str, str]]) -> list[np.ndarray]:
    """speech(text, voice) of each job, in order; espeak-ng runs as one process per job, a few at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: speech(*job), jobs))


def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel's default: Slaney mel scale, Slaney area normalisation; (n_mels, n_fft//2+1)."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f < 1000, f / (200 / 3), 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27))

    def mel_to_hz(m):
        return np.where(m < 15, m * (200 / 3), 1000 * np.exp((m - 15) * (np.log(6.4) / 27)))

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / np.diff(edges)[:-1, None]
    upper = ramps[2:] / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def mel_power(wav: np.ndarray, sr: int = 16000, n_fft: int = 400, hop: int = 160, n_mels: int = 40) -> np.ndarray:
    """Resemblyzer's features: librosa.feature.melspectrogram defaults (centred, zero-padded, Hann, power 2)
    with 25 ms windows and 10 ms hops; (frames, n_mels) float32."""
    padded = np.pad(wav.astype(np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann, as scipy's get_window
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    return (power @ mel_filters(sr, n_fft, n_mels).T).astype(np.float32)


def normalize_dbfs(wav: np.ndarray, target_dbfs: float = -30.0) -> np.ndarray:
    """Resemblyzer's volume normalisation: scale to target dBFS (RMS)."""
    rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2))
    return (wav * (10 ** (target_dbfs / 20) / max(rms, 1e-9))).astype(np.float32)
