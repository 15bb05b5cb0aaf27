"""User code the command line imports before it reads a config: `--plugin MODULE_OR_FILE` (repeatable)
and the config's top-level `plugins: [...]`. A plugin registers loss terms and methods
(rdd.losses.register_term, rdd.registry.register_method; docs/extending.md), which every command
then accepts; torchrun's workers and a sweep's processes import the same plugins from the same
command line and config."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from rdd.errors import RddError

LOADED: set[str] = set()  # what this process imported already: a plugin runs once


def _import_file(path: Path) -> None:
    name = f"rdd_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def _where(error: BaseException, plugin: str) -> str:
    """The plugin file's line that raised, if the error came from the plugin itself."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{error.filename}, line {error.lineno}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<frozen")]
    own = [f for f in frames if Path(f.filename).name == Path(plugin).name or f.filename.endswith(plugin.replace(".", "/") + ".py")]
    frame = (own or frames or [None])[-1]
    return f"{frame.filename}, line {frame.lineno}" if frame else plugin


def load_plugin(plugin: str) -> None:
    """Import one plugin, a Python file (path ending in .py) or an importable module name; any failure
    is one RddError naming the file."""
    path = Path(plugin)
    key = str(path.resolve()) if plugin.endswith(".py") else plugin
    if key in LOADED:
        return
    if plugin.endswith(".py") and not path.is_file():
        raise RddError(f"plugin '{plugin}' not found; pass an existing Python file or an importable module name")
    try:
        if plugin.endswith(".py"):
            _import_file(path)
        else:
            importlib.import_module(plugin)
    except ModuleNotFoundError as e:
        if e.name == plugin:
            raise RddError(f"plugin module '{plugin}' not found; pass a Python file (.py) or a module on PYTHONPATH") from None
        raise RddError(f"plugin '{plugin}' failed to import ({_where(e, plugin)}): {type(e).__name__}: {e}") from None
    except RddError as e:
        raise RddError(f"plugin '{plugin}' ({_where(e, plugin)}): {e}") from None
    except Exception as e:
        raise RddError(f"plugin '{plugin}' failed to import ({_where(e, plugin)}): {type(e).__name__}: {e}") from None
    LOADED.add(key)


def load_plugins(plugins: list[str]) -> None:
    for plugin in plugins:
        load_plugin(plugin)


def plugins_in(argv: list[str]) -> list[str]:
    """The values of every `--plugin X` or `--plugin=X` on a command line, before it is parsed (a
    plugin's methods must be known to the parser)."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found
