"""Render a build's report.html in headless Chromium, save a PNG screenshot, and check the layout.

    python scripts/check_report_render.py BUILD_DIR|REPORT.html [--png report.png] [--width 1280] [--height 2000]

(BUILD_DIR/bench/ holds the report `deployc bench` wrote: give that folder or its report.html.)

Exit 0 when Chromium rendered the page, every embedded <img> decodes as a PNG and the browser decoded it, and
no table is wider than its box at this window width (a clipped column); 1 otherwise. The layout is measured by
Chromium itself on a copy of the page with a measuring script appended (the report has no script of its own).
Chromium: `apt-get install -y chromium` (Debian); any chromium/google-chrome on PATH works.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
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


def _chromium(browser: str, args: list[str]) -> str:
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
            *args,
        ]
        # its crash reports and PulseAudio's runtime files go under XDG_CONFIG_HOME (~/.config otherwise)
        env = {**os.environ, "XDG_CONFIG_HOME": profile}
        return subprocess.run(cmd, check=True, capture_output=True, timeout=120, text=True, env=env).stdout


def screenshot(html_path: Path, png: Path, width: int, height: int, browser: str) -> None:
    _chromium(browser, [f"--screenshot={png}", f"--window-size={width},{height}", html_path.resolve().as_uri()])


_MEASURE = """<script>
const m = {width: document.documentElement.clientWidth,
  tables: [...document.querySelectorAll('table')].map(t => ({wide: t.scrollWidth, box: t.parentElement.clientWidth,
    title: (t.closest('div').previousElementSibling || {}).textContent || ''})),
  images: [...document.images].map(i => ({width: i.naturalWidth, complete: i.complete}))};
document.body.insertAdjacentHTML('beforeend', '<pre id="deployc-measure">' + JSON.stringify(m) + '</pre>');
</script>"""


def measure(html_path: Path, width: int, browser: str) -> dict:
    """What Chromium laid out at this window width: each table's width against its box's, each image's decoded
    width. Measured on a copy with a script appended (the report itself runs no script)."""
    with tempfile.TemporaryDirectory(prefix="deployc-measure-") as work:
        page = Path(work) / "report.html"
        page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), "utf-8")
        dom = _chromium(browser, ["--dump-dom", f"--window-size={width},1000", page.as_uri()])
    found = re.findall(r'<pre id="deployc-measure">(\{.*?\})</pre>', dom)
    if not found:
        raise RuntimeError("Chromium returned no measurement (the page did not load)")
    return json.loads(found[-1])


def layout_problems(measured: dict) -> list[str]:
    """Clipped tables (wider than their box: a column cut off or a scrollbar) and images the browser could not
    decode."""
    problems = [
        f"table after '{t['title'].strip()[:40]}' is {t['wide']} px wide in a {t['box']} px box"
        for t in measured["tables"]
        if t["wide"] > t["box"] + 1
    ]
    problems += [f"image {i} did not decode" for i, img in enumerate(measured["images"]) if not img["width"]]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("build_dir", type=Path)
    p.add_argument("--png", type=Path, help="screenshot path (default: BUILD_DIR/report.png)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args(argv)
    page = args.build_dir if args.build_dir.suffix == ".html" else args.build_dir / "report.html"
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
    png = args.png or page.with_suffix(".png")
    try:
        screenshot(page, png, args.width, args.height, browser)
        problems = layout_problems(measure(page, args.width, browser))
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError) as exc:
        print(f"{browser} failed: {exc}", file=sys.stderr)
        return 1
    ok = png.is_file() and png.read_bytes().startswith(_PNG_MAGIC) and not broken and images and not problems
    print(f"screenshot: {png} ({png.stat().st_size if png.is_file() else 0} bytes)")
    for problem in problems:
        print(f"layout at {args.width} px: {problem}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
