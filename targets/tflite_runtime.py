"""What the tflite target's modules share about the LiteRT runtime: the interpreter module (ai-edge-litert, else
tflite-runtime), the signature litert-torch gives a module, and the converter's and quantizer's console output
kept off the terminal."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SIGNATURE = "serving_default"  # the one signature litert_torch.convert gives a module


def interpreter_module() -> tuple[Any, str, str]:
    """(interpreter module, runtime name, version): ai-edge-litert, else the older tflite-runtime."""
    for module, dist in (
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
        ("tflite_runtime.interpreter", "tflite-runtime"),
    ):
        try:
            return importlib.import_module(module), dist, importlib.metadata.version(dist)
        except ImportError:
            continue
    raise ImportError("neither ai-edge-litert nor tflite-runtime is installed")


@contextmanager
def quiet_fds() -> Iterator[Path]:
    """Send fd 1/2 to a file while converting: the converter's C++ and progress logs bypass sys.stderr."""
    with tempfile.TemporaryDirectory(prefix="deployc-") as d:
        log = Path(d) / "log.txt"
        saved = [os.dup(1), os.dup(2)]
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield log
            finally:
                sys.stdout.flush()  # Python-level buffers would otherwise reach the console after the restore
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)


def log_tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:])


def library_failure(what: str, exc: Exception, log: Path) -> Exception:
    """The UsageError for a converter or quantizer that raised: its message and the last lines it logged."""
    from deployc.errors import UsageError

    detail = log_tail(log)
    return UsageError(
        f"targets.tflite: {what}: {type(exc).__name__}: {str(exc)[:300]}" + (f" (log: {detail})" if detail else "")
    )
