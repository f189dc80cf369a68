"""Errors deployc raises on purpose; each one carries the exit code the CLI returns."""

from __future__ import annotations


class DeploycError(Exception):
    """Base class: an error that is the user's to fix, reported without a traceback."""

    exit_code = 1


class UsageError(DeploycError):
    """Bad usage, config, model or data: nothing was built (exit 2)."""

    exit_code = 2


class PipelineError(UsageError):
    """A pipeline that cannot run as written; names the pass, its key and what ran before it."""

    def __init__(self, message: str, *, pass_name: str | None = None, ran_before: tuple[str, ...] = ()):
        where = f"pass '{pass_name}'" if pass_name else "pipeline"
        before = f" (after: {' | '.join(ran_before)})" if ran_before else " (first in the pipeline)"
        super().__init__(f"{where}{before if pass_name else ''}: {message}")
        self.pass_name = pass_name
        self.ran_before = ran_before


class GateFailed(DeploycError):
    """Artifacts were built but at least one failed its validation gate (exit 3)."""

    exit_code = 3
