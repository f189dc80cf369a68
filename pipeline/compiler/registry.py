"""Name → class tables for passes, targets, instruments and CLI commands, filled from entry points.

This is the one place where the driver meets the plugins: installed packages (deployc's own included)
declare them under the entry-point groups below, and a plugin module is imported only when its name
is used. The driver never branches on a pass or target name.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from deployc.core.config import suggest
from deployc.errors import UsageError

if TYPE_CHECKING:  # imported when a plugin loads: the CLI reads command names without numpy
    from deployc.compiler.contracts import Pass, Target

PASSES, TARGETS, INSTRUMENTS, COMMANDS, CONFIG_CHECKS = (
    "deployc.passes",
    "deployc.targets",
    "deployc.instruments",
    "deployc.commands",
    "deployc.config_checks",  # other files `validate-config` recognises: check(path, data) -> summary | None
)
_registered: dict[str, dict[str, Any]] = {PASSES: {}, TARGETS: {}, INSTRUMENTS: {}, COMMANDS: {}, CONFIG_CHECKS: {}}

P = TypeVar("P", bound="type[Pass]")
T = TypeVar("T", bound="type[Target]")


@functools.cache
def _declared(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


@functools.cache
def _load(group: str, name: str) -> Any:
    ep = _declared(group)[name]
    where = f"entry point '{name}' of group {group} ({ep.value}"
    where += f", from package {ep.dist.name})" if ep.dist else ")"
    try:
        obj = ep.load()
    except Exception as exc:
        raise UsageError(f"{where} cannot be imported: {type(exc).__name__}: {exc}") from exc
    from deployc.compiler.contracts import Pass, Target

    base = {PASSES: Pass, TARGETS: Target}.get(group)
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise UsageError(f"{where} is not a {base.__name__} subclass")
    if base is not None and obj.name != name:
        raise UsageError(f"{where} defines name '{obj.name}', not '{name}'")
    return obj


def names(group: str) -> list[str]:
    """Every name in a group, without importing any plugin."""
    return sorted(set(_declared(group)) | set(_registered[group]))


def get(group: str, name: str) -> Any:
    if name in _registered[group]:
        return _registered[group][name]
    if name not in _declared(group):
        known = names(group)
        kind = {PASSES: "pass", TARGETS: "target", INSTRUMENTS: "instrument", COMMANDS: "command"}.get(group, group)
        raise KeyError(f"unknown {kind} '{name}'{suggest(name, set(known))}; known: {', '.join(known)}")
    return _load(group, name)


def register(group: str, name: str, obj: Any) -> None:
    """Add a plugin from code (tests, notebooks); packages use entry points instead."""
    current = _registered[group].get(name)
    if current is not None and current is not obj:
        raise RuntimeError(f"two plugins named '{name}' in {group}: {current} and {obj}")
    _registered[group][name] = obj


def register_pass(cls: P) -> P:
    register(PASSES, cls.name, cls)
    return cls


def register_target(cls: T) -> T:
    register(TARGETS, cls.name, cls)
    return cls


def pass_names() -> list[str]:
    return names(PASSES)


def target_names() -> list[str]:
    return names(TARGETS)


def get_pass(name: str) -> type[Pass]:
    return get(PASSES, name)


def get_target(name: str) -> type[Target]:
    return get(TARGETS, name)


def instruments() -> list[Any]:
    """One instance of every instrument plugin (hooks run around each pass of every build)."""
    return [get(INSTRUMENTS, n)() for n in names(INSTRUMENTS)]


def commands() -> dict[str, Any]:
    """CLI command plugins: name → add_parser(subparsers, parents)."""
    return {n: get(COMMANDS, n) for n in names(COMMANDS)}


def config_checks() -> list[Any]:
    """Checks of other file kinds for `validate-config` (a sweep file): check(path, data) gives a summary dict,
    or None when the file is not of its kind."""
    return [get(CONFIG_CHECKS, n) for n in names(CONFIG_CHECKS)]
