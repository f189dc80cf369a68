"""Render a build's report.html in headless Chromium, save a PNG screenshot, and check the plots loaded.

    python scripts/check_report_render.py BUILD_DIR [--png report.png] [--width 1280] [--height 2000]

Exit 0 when Chromium rendered the page and every embedded <img> decodes as a PNG; 1 otherwise.
Chromium: `apt-get install -y chromium` (Debian); any chromium/google-chrome on PATH works.
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_browser() -> str | None:
    return next((p for p in map(shutil.which, _BROWSERS) if p), None)


def embedded_images(html_text: str) -> list[bytes]:
    """The decoded bytes of every base64 data-URI image in the page."""
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


def screenshot(html_path: Path, png: Path, width: int, height: int, browser: str) -> None:
    with tempfile.TemporaryDirectory(prefix="deployc-chromium-") as profile:  # a fresh profile: no state, no prompts
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            html_path.resolve().as_uri(),
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("build_dir", type=Path)
    p.add_argument("--png", type=Path, help="screenshot path (default: BUILD_DIR/report.png)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args(argv)
    page = args.build_dir / "report.html"
    if not page.is_file():
        print(f"{page}: not found (build with a deployc that writes report.html)", file=sys.stderr)
        return 1
    images = embedded_images(page.read_text(encoding="utf-8"))
    broken = [i for i, img in enumerate(images) if not img.startswith(_PNG_MAGIC)]
    print(f"{page}: {len(images)} embedded plots, {len(broken)} not PNG")
    browser = find_browser()
    if browser is None:
        print("no chromium on PATH: apt-get install -y chromium", file=sys.stderr)
        return 1
    png = args.png or args.build_dir / "report.png"
    try:
        screenshot(page, png, args.width, args.height, browser)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"{browser} failed: {exc}", file=sys.stderr)
        return 1
    ok = png.is_file() and png.read_bytes().startswith(_PNG_MAGIC) and not broken and images
    print(f"screenshot: {png} ({png.stat().st_size if png.is_file() else 0} bytes)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
