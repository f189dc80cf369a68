"""Keep third-party noise out of the terminal, in one place around the whole build (passes and targets need not).

Libraries print from Python (logging on the root logger, `warnings`, print) and from C++ straight to file
descriptors 1 and 2 (absl, XNNPACK, oneDNN, onnxruntime, progress bars). Inside `ThirdPartyOutput` all of
that goes to a temporary file; deployc's own lines go to `console`, a duplicate of the real stderr (deployc
logs through its instruments, and records of `deployc.*` loggers at WARNING and above still reach it).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import warnings
from types import TracebackType
from typing import Any, TextIO

OWN_PREFIX = "deployc"
TAIL_LINES = 30  # lines of captured output shown when the build dies of an internal error


class _Records(logging.Handler):
    """Root handler inside the capture: deployc's own records to the console, the rest to the capture file."""

    def __init__(self, capture: ThirdPartyOutput):
        super().__init__(logging.DEBUG)
        self.capture = capture
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.name.startswith(OWN_PREFIX) and record.levelno >= logging.WARNING:
            self.capture.own(f"warning: {record.getMessage()}")
        else:
            self.capture.write(text + "\n")


class ThirdPartyOutput:
    """Context manager capturing logging, warnings and fd 1/2 output; `console` is where deployc still writes."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console: TextIO | None = None
        self.text = ""
        self._file: Any = None
        self._saved: dict[int, int] = {}
        self._root: tuple[list[logging.Handler], int] | None = None
        self._warnings: Any = None
        self._recorded: list[warnings.WarningMessage] = []
        self._streams: tuple[Any, Any] = (None, None)

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text.encode("utf-8", "replace"))

    def own(self, line: str) -> None:
        stream = self.console or sys.stderr
        print(line, file=stream, flush=True)

    def __enter__(self) -> ThirdPartyOutput:
        if not self.enabled:
            return self
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._file = tempfile.TemporaryFile(buffering=0)
        try:
            self._saved = {fd: os.dup(fd) for fd in (1, 2)}
        except OSError:  # no fd 1/2 (a daemon): Python-level capture only
            self._saved = {}
        if 2 in self._saved:
            self.console = io.TextIOWrapper(
                os.fdopen(os.dup(self._saved[2]), "wb", buffering=0),
                encoding="utf-8",
                errors="replace",
                line_buffering=True,
            )
        for fd in self._saved:
            os.dup2(self._file.fileno(), fd)
        self._streams = (sys.stdout, sys.stderr)  # Python-level writers that may not go through fd 1/2
        sys.stdout = sys.stderr = io.TextIOWrapper(
            os.fdopen(os.dup(self._file.fileno()), "wb", buffering=0),
            encoding="utf-8",
            errors="replace",
            write_through=True,
        )
        root = logging.getLogger()
        self._root = (list(root.handlers), root.level)
        root.handlers = [_Records(self)]
        self._warnings = warnings.catch_warnings(record=True)
        self._recorded = self._warnings.__enter__()
        warnings.simplefilter("default")
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.enabled:
            return
        self._warnings.__exit__(None, None, None)
        root = logging.getLogger()
        root.handlers, root.level = self._root
        sys.stdout.flush()
        captured_stream, (sys.stdout, sys.stderr) = sys.stdout, self._streams
        captured_stream.close()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        for w in self._recorded:
            self.write(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n")
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        if self.console is not None:
            self.console.flush()
            self.console.close()
            self.console = None
        if exc is not None and self.text.strip() and not isinstance(exc, KeyboardInterrupt):
            tail = self.text.strip().splitlines()[-TAIL_LINES:]
            exc.add_note("third-party output before the error (run with --debug to see it as it happens):")
            exc.add_note("\n".join("  " + line for line in tail))
