"""Real images, offline: photos bundled with scikit-learn and scikit-image, and text rendered onto them."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zoo_lib import fetch

SKIMAGE = "scikit-image==0.26.0"
PHOTOS = ("astronaut.png", "camera.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg")


def photos(cache: Path) -> list[np.ndarray]:
    """RGB uint8 photos: scikit-image's (extracted from its wheel, not installed) and scikit-learn's two."""
    from sklearn.datasets import load_sample_images

    found = []
    for name in PHOTOS:
        img = Image.open(fetch.member(SKIMAGE, f"skimage/data/{name}", cache)).convert("RGB")
        found.append(np.asarray(img))
    return found + list(load_sample_images().images)


def font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


@lru_cache(maxsize=1)
def phrases() -> tuple[str, ...]:
    """Short English phrases (2-4 words, letters only) from CPython's pydoc_data.topics, sorted."""
    from pydoc_data.topics import topics

    words = [w for key in sorted(topics) for w in re.findall(r"[A-Za-z]{2,10}", topics[key])]
    out = {" ".join(words[i : i + 2 + i % 3]) for i in range(0, min(len(words), 40000), 7)}
    return tuple(sorted(p for p in out if len(p) <= 24))


def background(photo: np.ndarray, h: int, w: int, rng: np.random.Generator, light: bool = True) -> Image.Image:
    """A random h×w crop of `photo`, washed out towards white so dark text stays readable on it."""
    if photo.shape[0] < h or photo.shape[1] < w:  # upscale photos smaller than the crop
        r = max(h / photo.shape[0], w / photo.shape[1])
        size = (int(np.ceil(photo.shape[1] * r)), int(np.ceil(photo.shape[0] * r)))
        photo = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
    y = rng.integers(0, photo.shape[0] - h + 1)
    x = rng.integers(0, photo.shape[1] - w + 1)
    crop = photo[y : y + h, x : x + w].astype(np.float32)
    if light:
        crop = 255 - (255 - crop) * rng.uniform(0.15, 0.35)
    return Image.fromarray(crop.astype(np.uint8))


def text_line(text: str, photo: np.ndarray, rng: np.random.Generator, height: int = 48) -> np.ndarray:
    """`text` in dark ink on a light photo crop, tightly framed like a detected text box; RGB uint8."""
    f = font(int(height * rng.uniform(0.55, 0.7)))
    left, top, right, bottom = f.getbbox(text)
    w = right - left + 2 * int(height * 0.15)
    img = background(photo, height, min(w, photo.shape[1]), rng).resize((w, height))
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(img).text(
        ((w - (right - left)) // 2 - left, (height - (bottom - top)) // 2 - top), text, font=f, fill=ink
    )
    return np.asarray(img)


def scene(photo: np.ndarray, size: int, rng: np.random.Generator, lines: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A size×size photo crop with `lines` phrases drawn at random places, and the mask of their boxes."""
    img = background(photo, size, size, rng, light=False)
    draw, mask = ImageDraw.Draw(img), np.zeros((size, size), np.uint8)
    for i in range(lines):
        text = phrases()[int(rng.integers(len(phrases())))]
        f = font(int(rng.integers(16, 28)))
        left, top, right, bottom = f.getbbox(text)
        x = int(rng.integers(4, max(5, size - (right - left) - 4)))
        y = int(4 + i * (size - 8) / lines + rng.integers(0, max(1, (size - 8) // lines - (bottom - top))))
        box = (x + left - 3, y + top - 3, x + right + 3, y + bottom + 3)
        draw.rectangle(box, fill=(245, 245, 240))  # a label-like plate so the text is legible on any photo
        draw.text((x, y), text, font=f, fill=(20, 20, 20))
        mask[max(0, y + top) : y + bottom, max(0, x + left) : x + right] = 1
    return np.asarray(img), mask


def page(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size×size text page: 8-13 left-aligned lines of phrases in dark ink on a washed-out photo crop; RGB uint8."""
    img = background(photo, size, size, rng)
    draw = ImageDraw.Draw(img)
    lines = int(rng.integers(8, 14))
    f = font(int(size / lines * rng.uniform(0.45, 0.6)))
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    for i in range(lines):
        words = " ".join(phrases()[int(rng.integers(len(phrases())))] for _ in range(3))
        draw.text((int(size * 0.06), int(size * (0.04 + 0.92 * i / lines))), words, font=f, fill=ink)
    return np.asarray(img)


def letterbox(photo: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics' letterbox: resize keeping the aspect ratio, pad with grey 114 to size×size; RGB uint8."""
    h, w = photo.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    out = np.full((size, size, 3), 114, np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y : y + nh, x : x + nw] = np.asarray(Image.fromarray(photo).resize((nw, nh), Image.BILINEAR))
    return out
