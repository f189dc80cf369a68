"""Resolve 'file.py:callable' or 'package.module:callable' strings from configs."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from deployc.errors import UsageError
from deployc.storage.files import regular_file

USER_MODULE_PREFIX = "deployc_user_"  # modules imported from users' .py files are registered under this prefix


def import_callable(spec: str, base_dir: Path, key: str) -> Callable[..., Any]:
    """The callable named by `spec`; `key` is the config key, named in every error."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UsageError(f"{key}: '{spec}' is not 'file.py:callable' or 'module:callable'")
    if target.endswith(".py"):
        path = Path(target) if Path(target).is_absolute() else base_dir / target
        regular_file(path, key)
        mod_name = USER_MODULE_PREFIX + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        module = sys.modules.get(mod_name)
        if module is None:
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.path.insert(0, str(path.parent))  # let the file import its neighbours
            argv, sys.argv = sys.argv, [str(path)]  # a script's argparse must not read deployc's arguments
            try:
                module_spec.loader.exec_module(module)
            except SystemExit as exc:  # sys.exit() or argparse at import time: report it, never exit with its code
                raise UsageError(
                    f"{key}: importing '{path}' called sys.exit({exc.code!r}) (script code at import time? "
                    'guard it with `if __name__ == "__main__":`)'
                ) from None
            except Exception as exc:
                raise UsageError(f"{key}: importing '{path}' failed: {type(exc).__name__}: {exc}") from exc
            finally:
                sys.argv = argv
                sys.path.remove(str(path.parent))
            sys.modules[mod_name] = module
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UsageError(f"{key}: cannot import module '{target}': {exc}{_moved_hint(target, attr)}") from exc
        except SystemExit as exc:
            raise UsageError(f"{key}: importing module '{target}' called sys.exit({exc.code!r})") from None
        except Exception as exc:
            raise UsageError(f"{key}: importing module '{target}' failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        from deployc.core.config import suggest

        names = {n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))}
        raise UsageError(f"{key}: '{attr}' is not a callable in '{target}'{suggest(attr, names)}")
    return fn


def user_modules() -> list[ModuleType]:
    """Every module deployc imported from a user's .py file (model factories, metrics, data) in this process."""
    return [m for name, m in sorted(sys.modules.items()) if name.startswith(USER_MODULE_PREFIX)]


# deployc's own modules before they moved under the one `deployc` package (old name prefix -> new)
_MOVED = {
    "examples": "deployc.examples",
    "passes": "deployc.passes",
    "targets": "deployc.targets",
    "pipeline": "deployc",
}


def _moved_hint(target: str, attr: str) -> str:
    """' (did you mean ...?)' when `target` is an old deployc module name that now lives under `deployc`."""
    head, _, rest = target.partition(".")
    if head not in _MOVED:
        return ""
    new = _MOVED[head] + (f".{rest}" if rest else "")
    try:
        found = hasattr(importlib.import_module(new), attr)
    except ImportError:
        return ""
    return f" (did you mean '{new}:{attr}'? deployc's modules now live in the deployc package)" if found else ""
