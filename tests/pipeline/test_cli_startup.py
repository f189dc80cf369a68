"""The CLI imports only the command it runs: `deployc build` and `--version` never load bench/explain/demo
(which pull numpy, onnx and more); with no command (help, a typo) every command is listed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deployc.cli import main, parser


def _loaded_after(argv: list[str]) -> set[str]:
    code = (
        "import sys; from deployc.cli import parser; "
        f"parser({argv!r}); "
        "print(sorted(m for m in sys.modules if m in ('numpy', 'onnx', 'torch') or m.startswith('deployc.commands')))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(eval(run.stdout))


@pytest.mark.parametrize("argv", [["build", "model.yaml"], ["--version"], ["validate-config", "x.yaml"]])
def test_builtin_commands_load_no_plugin(argv):
    assert _loaded_after(argv) == set()


def test_a_plugin_command_loads_only_itself():
    loaded = _loaded_after(["explain", "out"])
    assert "deployc.commands.explain" in loaded
    assert not {"deployc.commands.bench", "deployc.commands.demo"} & loaded


def test_without_a_command_every_command_is_listed(capsys):
    help_text = parser([]).format_help()
    for name in ("build", "cache", "validate-config", "bench", "explain", "demo"):
        assert name in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0 and "--no-baselines" in capsys.readouterr().out
