"""Instruments hook in around passes from the outside (TVM-style): logging, progress, timing.

Passes never print; they call ctx.instruments.progress(...) for long loops and ctx.instruments.log(...) before
long work (a line ending in '…' names what runs until the next line). Everything goes to stderr so `--json`
keeps stdout machine-readable. While a build runs, a heartbeat says what is still running whenever the console
has been silent for HEARTBEAT_SECONDS, so no stretch of a build is silent for long (a model factory that trains,
a converter, a calibration); `quiet` silences all of it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO

from deployc.core.quiet import OWN_PREFIX, ThirdPartyOutput

HEARTBEAT_SECONDS = 9.0  # silence before a heartbeat line: with the poll and a loaded machine, ~10 s at most
POLL_SECONDS = 0.5
ONGOING = "…"  # a log line ending with it names work that runs until the next line


class Instrument(Protocol):
    """Hooks around every pass. after_pass may raise a DeploycError to stop the build (invariant checks)."""

    def before_pass(self, name: str) -> None: ...
    def after_pass(self, name: str, state: Any, record: Any) -> None: ...


class Heartbeat:
    """Which work is running and since when; tick() gives a line when nothing was said for `every` seconds.

    The clock is injectable so tests drive it without sleeping; Instruments calls tick() from a thread."""

    def __init__(self, every: float = HEARTBEAT_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.said = self.spoke = clock()  # last line of any kind / last line that was not a heartbeat
        self.activity: tuple[str, float] | None = None  # (what runs, since when)

    def heard(self, line: str) -> None:
        """A line reached the console: silence starts again. A line ending in '…' names the work now running (its
        trailing parenthesis left out); an indented line is a detail of that work (an epoch, a progress step) and
        keeps it; any other line ends it."""
        self.said = self.spoke = self.clock()
        text = line.strip()
        if text.endswith(ONGOING):
            self.activity = (re.sub(r"\s*\([^()]*\)$", "", text.rstrip(ONGOING).strip()), self.said)
        elif not line[:1].isspace():
            self.activity = None

    def begin(self, what: str) -> None:
        self.activity = (what, self.clock())

    def end(self) -> None:
        self.activity = None

    def tick(self) -> str | None:
        now = self.clock()
        if now - self.said < self.every:
            return None
        self.said = now
        if self.activity is not None:
            what, since = self.activity
            return f"  {ONGOING} {what}: still running ({now - since:.0f} s)"
        return f"  {ONGOING} still working ({now - self.spoke:.0f} s since the last line)"


class _OwnRecords(logging.Handler):
    """INFO records of deployc's own loggers (e.g. a demo model training in its factory) reach the console; warnings
    and above already do (deployc.core.quiet), so this handler takes only what is below them."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            self._log(record.getMessage())


class Instruments:
    """Dispatches to instruments and owns the console: rich on a TTY, plain lines otherwise, or nothing."""

    def __init__(
        self,
        quiet: bool = False,
        stream: TextIO | None = None,
        extra: list[Instrument] | None = None,
        heartbeat: float = HEARTBEAT_SECONDS,
    ):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.fancy = not quiet and self.stream.isatty()
        self.extra = list(extra or [])
        self.heartbeat = Heartbeat(heartbeat)
        self._console = None
        self._lock = threading.RLock()  # the heartbeat thread writes too
        self._live = 0  # rich progress bars showing: they tick their own elapsed time
        if self.fancy:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        with self._lock:
            self._write(message)
            self.heartbeat.heard(message)

    def _write(self, message: str) -> None:
        if self._console:
            self._console.print(message, highlight=False, markup=False)
        else:
            print(message, file=self.stream, flush=True)

    def _beat(self) -> None:
        with self._lock:
            line = None if self.quiet or self._live else self.heartbeat.tick()
            if line is not None:
                self._write(line)

    @contextmanager
    def beating(self, poll: float = POLL_SECONDS) -> Iterator[None]:
        """A thread that says what is still running whenever the console was silent for the heartbeat's period."""
        if self.quiet:
            yield
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(poll):
                self._beat()

        thread = threading.Thread(target=run, name="deployc-heartbeat", daemon=True)
        self.heartbeat.said = self.heartbeat.clock()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextmanager
    def third_party_quiet(self, enabled: bool = True) -> Iterator[ThirdPartyOutput]:
        """Capture third-party output (see deployc.core.quiet) while deployc's own lines keep reaching the terminal;
        deployc's INFO log records are shown as lines, and the heartbeat runs."""
        own = logging.getLogger(OWN_PREFIX)
        handler, level = _OwnRecords(self.log), own.level
        own.addHandler(handler)
        own.setLevel(logging.INFO)
        try:
            with ThirdPartyOutput(enabled) as captured:
                stream = self.stream
                if captured.console is not None and _fd(stream) in (1, 2):
                    self._swap(captured.console)
                try:
                    with self.beating():
                        yield captured
                finally:
                    self._swap(stream)
        finally:
            own.removeHandler(handler)
            own.setLevel(level)

    def _swap(self, stream: TextIO) -> None:
        with self._lock:
            self.stream = stream
            if self._console is not None:
                self._console.file = stream

    def before_pass(self, name: str) -> None:
        self.log(f"▶ {name}")
        self.heartbeat.begin(name)
        for i in self.extra:
            i.before_pass(name)

    def after_pass(self, name: str, state: Any, record: Any) -> None:
        self.heartbeat.end()
        shown = ", ".join(f"{k}={_short(v)}" for k, v in record.metrics.items() if not isinstance(v, (dict, list)))
        self.log(f"✓ {name} ({record.seconds:.1f}s){': ' + shown if shown else ''}")
        for i in self.extra:
            i.after_pass(name, state, record)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """Yields advance(n=1, **fields); rich bar on a TTY, a line per ~10% otherwise, each with elapsed time."""
        if self.quiet:
            yield lambda n=1, **fields: None
            return
        if self.fancy:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[info]}"),
                console=self._console,
                transient=True,
            ) as bar:
                task = bar.add_task(description, total=total, info="")

                def advance(n: int = 1, **fields: Any) -> None:
                    bar.update(task, advance=n, info=" ".join(f"{k}={_short(v)}" for k, v in fields.items()))

                self._live += 1
                try:
                    yield advance
                finally:
                    self._live -= 1
            return
        clock = self.heartbeat.clock
        state = {"done": 0, "next": max(1, total // 10), "t0": clock()}
        self.heartbeat.begin(f"{description} (0/{total} done)")

        def advance(n: int = 1, **fields: Any) -> None:
            state["done"] += n
            if state["done"] >= state["next"] or state["done"] == total:
                state["next"] += max(1, total // 10)
                parts = [f"{description} {state['done']}/{total}", *(f"{k}={_short(v)}" for k, v in fields.items())]
                self.log(f"  {' '.join(parts)} ({clock() - state['t0']:.0f} s)")
                self.heartbeat.begin(f"{description} ({state['done']}/{total} done)")

        try:
            yield advance
        finally:
            self.heartbeat.end()


def _fd(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
