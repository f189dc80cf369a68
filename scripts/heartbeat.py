"""Run a command, pass its output through, and say it is still running when it has been silent for 10 s.

    python scripts/heartbeat.py "installing deployc's dependencies" -- pip install --quiet -e ".[dev,tflite]"

The Makefile wraps its quiet `pip install` steps with it, so `make demo` on a fresh clone has no silent minute.
Standard library only: it runs before the virtual environment exists. Exits with the command's exit code.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

EVERY = 9.0  # with the 0.5 s poll and a loaded machine: no silence much over 10 s


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1 or len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    label, command = argv[0], argv[2:]
    t0 = last = time.monotonic()
    print(f"{label} …", flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lock = threading.Lock()

    def beat() -> None:
        nonlocal last
        while proc.poll() is None:
            time.sleep(0.5)
            with lock:
                if time.monotonic() - last >= EVERY:
                    print(f"  … {label}: still running ({time.monotonic() - t0:.0f} s)", flush=True)
                    last = time.monotonic()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    for line in iter(proc.stdout.readline, b""):
        with lock:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            last = time.monotonic()
    code = proc.wait()
    thread.join()
    print(f"{label}: {'done' if code == 0 else f'failed (exit {code})'} in {time.monotonic() - t0:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
