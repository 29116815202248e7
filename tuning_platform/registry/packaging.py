"""What travels with a registered model: its code (the `trainables` package, a user's own
module) and the requirements that code imports at load, pinned to this environment.

Finding the requirements reads every installed distribution's file list (0.7 s here), and
MLflow's `log_model` reads them again to check the requirements against this environment: 1.7
s at a job's end together. A job that will register a model starts both on a thread at its
start (`requirements_ahead`), while its driver mostly waits for Ray and the trials; the
registration then takes the result.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from tuning_platform._compat.mlflow import requirement_checks_warmed
from tuning_platform.cluster.runtime_env import trainables_folder

# Requirements being found ahead, by the code's paths; each taken once, by the registration.
_AHEAD: dict[tuple[str, ...], Future[list[str]]] = {}


def code_paths(module: Any) -> list[str]:
    """The code a loaded model needs: the `trainables` package, and a user's own trainable
    module (a file, or its package's folder) when it lives outside it."""
    paths = [str(trainables_folder())]
    file = getattr(module, "__file__", None)
    if file is None or module.__name__.split(".")[0] == "trainables":
        return paths
    top = sys.modules.get(module.__name__.split(".")[0], module)
    top_file = Path(getattr(top, "__file__", file)).resolve()
    paths.append(str(top_file.parent if top_file.name == "__init__.py" else top_file))
    return paths


def requirements_ahead(module: Any) -> None:
    """Start finding the requirements of `module`'s code (`code_requirements`), and MLflow's
    map for its check of them, on a thread of their own; `code_requirements` takes the result."""
    paths = code_paths(module)
    future: Future[list[str]] = Future()
    _AHEAD[tuple(paths)] = future

    def find() -> None:
        try:
            requirement_checks_warmed()
            future.set_result(_requirements_of(paths))
        except BaseException as err:  # noqa: BLE001 - handed to the registration, which finds them itself
            future.set_exception(err)

    threading.Thread(target=find, name="model-requirements", daemon=True).start()


def code_requirements(paths: list[str]) -> list[str]:
    """`dist==version` for every installed distribution the code imports when it is loaded
    (module-level imports, class bodies included; not those inside functions, which loading
    does not run), the standard library and the shipped code itself left out. Found ahead by
    `requirements_ahead` when the job started it; found here if it failed."""
    ahead = _AHEAD.pop(tuple(paths), None)
    if ahead is not None:
        with contextlib.suppress(Exception):
            return ahead.result()
    return _requirements_of(paths)


def _requirements_of(paths: list[str]) -> list[str]:
    local = {Path(path).stem for path in paths}
    names: set[str] = set()
    for file in _python_files(paths):
        names |= _imported_at_load(ast.parse(file.read_text(), str(file)))
    names -= local | set(sys.stdlib_module_names) | {"__future__"}
    distributions = importlib.metadata.packages_distributions()
    requirements = set()
    for name in names:
        for dist in distributions.get(name, []):
            version = importlib.metadata.version(dist).split("+")[0]  # torch's +cpu is a local build tag
            requirements.add(f"{dist}=={version}")
    return sorted(requirements, key=str.lower)


def _python_files(paths: list[str]) -> Iterator[Path]:
    for path in map(Path, paths):
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imported_at_load(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    pending = list(ast.iter_child_nodes(tree))
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        pending.extend(ast.iter_child_nodes(node))
    return names
