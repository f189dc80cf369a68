"""Errors deployc raises on purpose; each one carries the exit code the CLI returns."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """'TypeName: first line of the message', short enough for one line of a report."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


def failure_text(exc: BaseException) -> str:
    """'TypeName: message' on one line (its lines joined by '; '), short enough for a table cell."""
    text = "; ".join(line.strip(" -") for line in str(exc).splitlines() if line.strip(" -"))
    return f"{type(exc).__name__}: {text}".rstrip(": ")[:600]


class DeploycError(Exception):
    """Base class: an error reported without a traceback (the exit code says whose it is to fix)."""

    exit_code = 1


class UsageError(DeploycError):
    """Bad usage, config, model or data: nothing was built (exit 2)."""

    exit_code = 2


def _where(pass_name: str, ran_before: tuple[str, ...]) -> str:
    return f"pass '{pass_name}' (after: {' | '.join(ran_before) if ran_before else 'nothing; first in the pipeline'})"


class PipelineError(UsageError):
    """A pipeline that cannot run as written; names the pass, its key and what ran before it."""

    def __init__(self, message: str, *, pass_name: str | None = None, ran_before: tuple[str, ...] = ()):
        super().__init__(f"{_where(pass_name, ran_before)}: {message}" if pass_name else f"pipeline: {message}")
        self.pass_name = pass_name
        self.ran_before = ran_before


class PassError(DeploycError):
    """A pass raised an unexpected exception or broke its contract (exit 1: a bug in the pass or a library)."""

    def __init__(self, message: str, *, pass_name: str, ran_before: tuple[str, ...] = ()):
        super().__init__(f"{_where(pass_name, ran_before)}: {message}")
        self.pass_name = pass_name
        self.ran_before = ran_before


class InvalidGraphError(DeploycError):
    """A pass emitted an ONNX graph the checker or onnxruntime rejects: the model is beyond that pass (exit 2,
    nothing built; inside a target only that artifact fails, with gate 'error')."""

    exit_code = 2

    def __init__(self, message: str, *, pass_name: str, ran_before: tuple[str, ...] = ()):
        super().__init__(f"{_where(pass_name, ran_before)}: {message}")
        self.pass_name = pass_name


class GateFailed(DeploycError):
    """Artifacts were built but at least one failed its validation gate (exit 3)."""

    exit_code = 3
