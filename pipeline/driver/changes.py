"""Why a build runs again: what differs between the inputs a build key was computed from (stored beside the
build in OUT/.deployc-build-key.json) and the inputs now — a config key with its old and new value, a file,
deployc's own code, the installed packages, the Python version or the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """{'validate.max_drift': 0.01, 'passes[0].finetune.epochs': 3, ...}: a config's leaves by dotted key."""
    if isinstance(value, dict) and value:
        return {
            k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}" if prefix else key).items()
        }
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if value is not _ABSENT else "(unset)"
    return text if len(text) <= 40 else text[:37] + "..."


_ABSENT = object()


def _where(path: str) -> str:
    """A path as a person reads it: relative to the current folder when below it."""
    try:
        return Path(path).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path


def _listed(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def changed_inputs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two key_inputs(): 'config key validate.max_drift: 0.01 -> 0.02', 'models/net.py
    changed', 'deployc's own files changed (cli.py)', 'installed packages changed (torch-2.13.0 -> ...)'."""
    reasons = []
    a, b = _flat(old.get("config", {})), _flat(new.get("config", {}))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, _ABSENT) != b.get(k, _ABSENT))
    reasons += [f"config key {k}: {_shown(a.get(k, _ABSENT))} -> {_shown(b.get(k, _ABSENT))}" for k in keys[:3]]
    if len(keys) > 3:
        reasons.append(f"{len(keys) - 3} more config keys")
    if old.get("base_dir") != new.get("base_dir"):
        reasons.append(f"the config's folder: {old.get('base_dir')} -> {new.get('base_dir')}")
    if old.get("targets") != new.get("targets"):
        reasons.append(f"--target: {old.get('targets') or 'all'} -> {new.get('targets') or 'all'}")
    before, now = dict(map(tuple, old.get("files", []))), dict(map(tuple, new.get("files", [])))
    for path in sorted(before.keys() | now.keys()):
        if path not in before:
            why = "a module beside a factory, which may import it" if path.endswith(".py") else "a file the build reads"
            reasons.append(f"{_where(path)} is new ({why})")
        elif path not in now:
            reasons.append(f"{_where(path)} is no longer read")
        elif before[path] != now[path]:
            reasons.append(f"{_where(path)} {'is missing' if now[path] == 'missing' else 'changed'}")
    ours_old, ours_new = old.get("deployc", {}), new.get("deployc", {})
    ours = sorted(k for k in ours_old.keys() | ours_new.keys() if ours_old.get(k) != ours_new.get(k))
    if ours:
        reasons.append(f"deployc's own files changed ({_listed(ours)})")
    gone = sorted(set(old.get("distributions", [])) - set(new.get("distributions", [])))
    came = sorted(set(new.get("distributions", [])) - set(old.get("distributions", [])))
    if gone or came:
        shown = [n.removesuffix(".dist-info").removesuffix(".egg-info") for n in came] or ["-"]
        reasons.append(f"installed packages changed (now {_listed(shown)}; before {_listed(gone) if gone else '-'})")
    for name, what in (("python", "the Python version"), ("cpu", "the CPU (int8 artifacts are tuned for it)")):
        if old.get(name) != new.get(name):
            reasons.append(f"{what} changed")
    return reasons
