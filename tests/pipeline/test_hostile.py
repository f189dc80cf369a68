"""Hostile inputs, one row each (issue 13): what a careless or malicious user can hand deployc.

Every row runs the real CLI in-process and states the exit code, the message (a regex over stderr) and what
must hold on disk afterwards. Bad input is exit 2 with the file/key/layer named and nothing written; deployc
never touches what it did not write; a gate cannot be fooled. Set DEPLOYC_HOSTILE_REPORT=FILE to write the
table of rows (id, exit code, first line of the message) as markdown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from deployc.cli import main
from tests.pipeline import hostile_cases as hc
from tests.pipeline import hostile_commands as hc23
from tests.pipeline.hostile_files import FILE_ROWS
from tests.pipeline.hostile_support import Env, data_npz, write_config


@dataclass
class Row:
    id: str
    run: Callable[[Env], None]  # sets up tmp files and calls env.cli(...)
    code: int
    message: str  # regex that stderr must match
    check: Callable[[Env], None] | None = None  # what must hold on disk afterwards


ROWS = [Row(*r) for r in hc.ISSUE_ROWS + hc.OWN_ROWS + FILE_ROWS + hc23.ISSUE23_ROWS + hc23.OWN23_ROWS]
_SEEN: list[tuple[str, str, int, str]] = []


@pytest.fixture(scope="session")
def hostile_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished build (onnx fp32 + int8 of the MLP on data.npz) that rows about build dirs copy."""
    from deployc import build

    folder = tmp_path_factory.mktemp("hostile-build")
    data_npz(folder)
    build(write_config(folder, hc23.build_cfg(folder)), out=folder / "out", quiet=True)
    return folder


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile(
    row: Row,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("DEPLOYC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    monkeypatch.chdir(tmp_path)
    env = Env(tmp_path, monkeypatch, lambda argv: _cli(argv, capsys), fixture=request.getfixturevalue)
    row.run(env)
    assert env.code == row.code, f"exit {env.code}, expected {row.code}; stderr:\n{env.err}"
    assert re.search(row.message, env.err), f"stderr does not match {row.message!r}:\n{env.err}"
    if row.code == 2 and not env.out_existed:
        assert not (tmp_path / "out").exists(), "a refused build wrote its out dir"
    if row.check is not None:
        row.check(env)
    lines = env.err.splitlines() or env.stdout.splitlines()[:1]  # --json and cache commands answer on stdout
    first = next((ln for ln in lines if ln.startswith("deployc:")), None) or next(
        ln for ln in lines if re.search(row.message, ln) or ln == lines[-1]
    )
    _SEEN.append((row.id, env.command, env.code, first.replace(str(tmp_path), "TMP")))
    report = os.environ.get("DEPLOYC_HOSTILE_REPORT")
    if report:
        lines = ["| case | command | exit | first line of the message |", "|---|---|---|---|"]
        lines += [f"| {i} | {cmd} | {c} | `{m[:160]}` |" for i, cmd, c, m in _SEEN]
        Path(report).write_text("\n".join(lines) + "\n")


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def test_rows_cover_the_issue_and_thirty_more() -> None:
    assert len(hc.ISSUE_ROWS) >= 29 and len(hc.OWN_ROWS) >= 30
    assert len(hc23.ISSUE23_ROWS) >= 30 and len(hc23.OWN23_ROWS) >= 30  # issue 23: its examples, then 30 more
    assert len({r.id for r in ROWS}) == len(ROWS)
