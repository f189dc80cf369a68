"""The canonical one-line pipeline text, e.g. `prune.structured{ratio=0.5} | onnx{precision=[fp32,int8]}`.

format_pipeline() and parse_pipeline() are inverses: a logged or manifest string can be fed back.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from deployc.errors import UsageError

_BARE = re.compile(r"^[A-Za-z_][\w.\-/]*$")


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if _BARE.match(value) and yaml.safe_load(value) == value else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def format_step(name: str, options: dict[str, Any]) -> str:
    if not options:
        return name
    return name + "{" + ",".join(f"{k}={_format_value(v)}" for k, v in options.items()) + "}"


def format_pipeline(steps: list[tuple[str, dict[str, Any]]]) -> str:
    return " | ".join(format_step(n, o) for n, o in steps)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is not inside brackets, braces or quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote and text[i - 1] != "\\" else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_pipeline(text: str) -> list[tuple[str, dict[str, Any]]]:
    steps = []
    for part in _split_top(text, "|"):
        m = re.fullmatch(r"([A-Za-z_][\w.]*)\s*(?:\{(.*)\})?", part, flags=re.S)
        if not m:
            raise UsageError(f"pipeline text: cannot read step '{part}' (expected name or name{{key=value,...}})")
        options: dict[str, Any] = {}
        for item in _split_top(m.group(2) or "", ","):
            if not item:
                continue
            key, eq, raw = item.partition("=")
            if not eq:
                raise UsageError(f"pipeline text: option '{item}' of step '{m.group(1)}' needs key=value")
            options[key.strip()] = yaml.safe_load(raw.strip())
        steps.append((m.group(1), options))
    return steps
