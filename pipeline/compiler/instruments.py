"""Instruments hook in around passes from the outside (TVM-style): logging, progress, timing.

Passes never print; they call ctx.instruments.progress(...) for long loops. Everything goes to
stderr so `--json` keeps stdout machine-readable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TextIO

from deployc.core.quiet import ThirdPartyOutput


class Instrument(Protocol):
    """Hooks around every pass. after_pass may raise a DeploycError to stop the build (invariant checks)."""

    def before_pass(self, name: str) -> None: ...
    def after_pass(self, name: str, state: Any, record: Any) -> None: ...


class Instruments:
    """Dispatches to instruments and owns the console: rich on a TTY, plain lines otherwise, or nothing."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, extra: list[Instrument] | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.fancy = not quiet and self.stream.isatty()
        self.extra = list(extra or [])
        self._console = None
        if self.fancy:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self._console:
            self._console.print(message, highlight=False, markup=False)
        else:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def third_party_quiet(self, enabled: bool = True) -> Iterator[ThirdPartyOutput]:
        """Capture third-party output (see deployc.core.quiet) while deployc's own lines keep reaching the terminal."""
        with ThirdPartyOutput(enabled) as captured:
            stream = self.stream
            if captured.console is not None and _fd(stream) in (1, 2):
                self._swap(captured.console)
            try:
                yield captured
            finally:
                self._swap(stream)

    def _swap(self, stream: TextIO) -> None:
        self.stream = stream
        if self._console is not None:
            self._console.file = stream

    def before_pass(self, name: str) -> None:
        self.log(f"▶ {name}")
        for i in self.extra:
            i.before_pass(name)

    def after_pass(self, name: str, state: Any, record: Any) -> None:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in record.metrics.items() if not isinstance(v, (dict, list)))
        self.log(f"✓ {name} ({record.seconds:.1f}s){': ' + shown if shown else ''}")
        for i in self.extra:
            i.after_pass(name, state, record)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """Yields advance(n=1, **fields); rich bar on a TTY, a line per ~10% otherwise."""
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

                yield advance
            return
        state = {"done": 0, "next": max(1, total // 10), "t0": time.perf_counter()}

        def advance(n: int = 1, **fields: Any) -> None:
            state["done"] += n
            if state["done"] >= state["next"] or state["done"] == total:
                state["next"] += max(1, total // 10)
                info = " ".join(f"{k}={_short(v)}" for k, v in fields.items())
                self.log(f"  {description} {state['done']}/{total} {info}".rstrip())

        yield advance


def _fd(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
