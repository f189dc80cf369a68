"""Name → class tables for passes and targets; the driver looks things up here, never branches on names."""

from __future__ import annotations

import importlib
from typing import TypeVar

from pipeline.config import suggest
from pipeline.contracts import Pass, Target

_PASSES: dict[str, type[Pass]] = {}
_TARGETS: dict[str, type[Target]] = {}
# Modules that register on import; importing them is cheap (heavy libraries load inside run/build).
_PLUGIN_MODULES = ("passes", "targets")

P = TypeVar("P", bound=type[Pass])
T = TypeVar("T", bound=type[Target])


def register_pass(cls: P) -> P:
    if cls.name in _PASSES and _PASSES[cls.name] is not cls:
        raise RuntimeError(f"two passes named '{cls.name}': {_PASSES[cls.name]} and {cls}")
    _PASSES[cls.name] = cls
    return cls


def register_target(cls: T) -> T:
    _TARGETS[cls.name] = cls
    return cls


def _load_plugins() -> None:
    for module in _PLUGIN_MODULES:
        importlib.import_module(module)


def pass_names() -> list[str]:
    _load_plugins()
    return sorted(_PASSES)


def target_names() -> list[str]:
    _load_plugins()
    return sorted(_TARGETS)


def get_pass(name: str) -> type[Pass]:
    _load_plugins()
    if name not in _PASSES:
        raise KeyError(f"unknown pass '{name}'{suggest(name, set(_PASSES))}; known: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def get_target(name: str) -> type[Target]:
    _load_plugins()
    if name not in _TARGETS:
        raise KeyError(f"unknown target '{name}'{suggest(name, set(_TARGETS))}; known: {', '.join(sorted(_TARGETS))}")
    return _TARGETS[name]
