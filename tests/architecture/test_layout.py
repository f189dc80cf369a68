"""The package layout and its layering: one installed namespace, import-linter contracts, no import circle
anywhere, no private imports, and the pass/target plugins found through entry points. (ruff runs in `make test`.)"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = PYPROJECT["tool"]["setuptools"]["package-dir"]
PACKAGES = PYPROJECT["tool"]["setuptools"]["packages"]
CONTRACTS = PYPROJECT["tool"]["importlinter"]["contracts"]
DRIVER = "deployc"  # the pipeline/ folder: every installed module outside the plugin and sweep packages
OUTSIDE_DRIVER = ("deployc.passes", "deployc.targets", "deployc.commands", "deployc.examples", "deployc.sweep")


def installed_layout(dest: Path) -> Path:
    """The source tree laid out as pip installs it (deployc/, deployc/passes/, ...), from the package-dir map.

    import-linter reads packages from disk; with the editable install's mapping the sub-packages live in
    other folders, so the layout it checks is rebuilt here exactly as the wheel ships it.
    """
    for package in PACKAGES:
        top = max((p for p in PACKAGE_DIRS if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / PACKAGE_DIRS[top] / Path(*package[len(top) :].split(".")[1:])
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in folder.glob("*.py"):
            shutil.copy2(src, target / src.name)
    return dest


def test_import_linter_contracts_hold(tmp_path):
    lint = Path(sys.executable).with_name("lint-imports")
    tree = installed_layout(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    run = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in run.stdout


def test_contracts_catch_a_driver_that_imports_a_pass(tmp_path):
    """The layering check can fail: a driver module importing a pass breaks the first contract."""
    tree = installed_layout(tmp_path / "site")
    (tree / "deployc" / "sneaky.py").write_text("from deployc.passes import export  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "deployc.sneaky -> deployc.passes.export" in run.stdout


def test_one_installed_namespace_from_a_neutral_folder(tmp_path):
    code = (
        "import importlib.util, deployc, deployc.passes, deployc.targets, deployc.commands, deployc.examples, deployc.sweep;"
        "print([importlib.util.find_spec(n) for n in ('pipeline', 'passes', 'targets', 'examples', 'commands', 'sweep')])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[None, None, None, None, None, None]"


def _import_graph(tree: Path) -> dict[str, set[str]]:
    """Module -> the deployc modules it imports, every import statement counted (in functions and under
    TYPE_CHECKING too), read with grimp from the package as installed."""
    import grimp

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tree))
        graph = grimp.build_graph("deployc", cache_dir=None)
    return {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan): every import circle, as its members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_of(module: str) -> str:
    """The sub-package a module belongs to (deployc.core.config -> deployc.core); top-level modules stand alone."""
    return ".".join(module.split(".")[:2])


def test_no_import_circle_between_modules_or_sub_packages(tmp_path):
    edges = _import_graph(installed_layout(tmp_path / "site"))
    assert _cycles(edges) == []
    packages: dict[str, set[str]] = {}
    for module, deps in edges.items():
        packages.setdefault(_package_of(module), set()).update(
            _package_of(d) for d in deps if _package_of(d) != _package_of(module)
        )
    assert _cycles(packages) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_driver_module_imports_the_sweep(tmp_path):
    edges = _import_graph(installed_layout(tmp_path / "site"))
    driver = [m for m in edges if not m.startswith(OUTSIDE_DRIVER)]
    assert any(m.startswith("deployc.driver") for m in driver)
    assert [(m, d) for m in driver for d in edges[m] if d.startswith("deployc.sweep")] == []


def test_every_sub_package_says_what_it_owns_and_may_import():
    for package in PACKAGES:
        if package.startswith(f"{DRIVER}.") and not package.startswith(OUTSIDE_DRIVER):
            init = ROOT / "pipeline" / Path(*package.split(".")[1:]) / "__init__.py"
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            assert doc.startswith(package) and "May import" in doc, init


def _private_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {node.module}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deployc")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]


def test_no_private_name_is_imported_across_modules():
    found = [
        hit
        for folder in PACKAGE_DIRS.values()
        for path in sorted((ROOT / folder).rglob("*.py"))
        for hit in _private_imports(path)
    ]
    assert found == []


@pytest.mark.parametrize("group", ["deployc.passes", "deployc.targets"])
def test_every_entry_point_loads_and_names_itself(group):
    from deployc.compiler import registry

    names = registry.names(group)
    assert names, f"no {group} entry points: is deployc installed (pip install -e .)?"
    for name in names:
        assert registry.get(group, name).name == name


def test_old_module_names_in_configs_get_a_did_you_mean(tmp_path):
    """A config written before the move (`examples.digits_cnn:pretrained`) says what the name is now."""
    config = tmp_path / "old.yaml"
    config.write_text(
        "model: {factory: 'examples.digits_cnn:pretrained', inputs: [{name: image, shape: [batch, 1, 8, 8]}]}\n"
        "data: {validation: digits}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, "-m", "deployc.cli", "build", str(config), "--out", str(tmp_path / "o")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 2, run.stderr
    assert "did you mean 'deployc.examples.digits_cnn:pretrained'?" in run.stderr
    assert not (tmp_path / "o").exists()
