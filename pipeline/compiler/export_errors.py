"""Where in the user's code a failed export (or forward) broke: the module path and the source line.

torch.export runs the model's Python code while tracing, so the user's frames are on the exception's
traceback; the innermost one outside torch, the standard library and deployc's driver is the line to show.
"""

from __future__ import annotations

import linecache
import sysconfig
import traceback
from pathlib import Path
from typing import Any

_LIBRARY_DIRS = tuple(
    str(Path(p).resolve()) for p in {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")} if p
)


def _is_user_frame(frame: Any) -> bool:
    name = str(frame.f_globals.get("__name__", ""))
    if name.startswith("deployc") and not name.startswith(("deployc.examples", "deployc_user_")):
        return False
    path = frame.f_code.co_filename
    if path.startswith("<"):
        return False
    resolved = str(Path(path).resolve())
    return not resolved.startswith(_LIBRARY_DIRS)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def user_location(exc: BaseException, root: Any = None) -> str | None:
    """'layer body.1 (Gate), /path/model.py:10: if (y.sum() > 0).item():' for the innermost user frame."""
    for e in reversed(_chain(exc)):  # the innermost cause holds the frames of the traced model
        frames = [f for f, _ in traceback.walk_tb(e.__traceback__)]
        linenos = [n for _, n in traceback.walk_tb(e.__traceback__)]
        for frame, lineno in reversed(list(zip(frames, linenos))):
            if not _is_user_frame(frame):
                continue
            path = frame.f_code.co_filename
            code = linecache.getline(path, lineno).strip()
            where = f"{path}:{lineno}" + (f": {code}" if code else "")
            layer = _layer(frame.f_locals.get("self"), root)
            return f"layer {layer}, {where}" if layer else where
    return None


def _layer(obj: Any, root: Any) -> str | None:
    """The module path of `obj` inside `root` ('body.1 (Gate)'), or its class for the root itself."""
    if root is None or obj is None:
        return None
    for name, module in root.named_modules():
        if module is obj:
            return f"{name} ({type(obj).__name__})" if name else f"<top-level {type(obj).__name__}>"
    return None
