"""The import paths of modules that moved into packages, kept loading for what older releases
of this package pickled.

Tune pickles a run's callbacks, its stopper, its trial-folder namer and the searcher (with its
Optuna sampler) into the job's saved state by import path; `--resume` loads them by the same
path. A job saved before the modules moved into packages names the old flat paths
(`tuning_platform.guard.TrialGuard`, ...): each old name below loads the module that now holds
those classes. `tuning_platform.tracking` is a package of the same name now; its `__init__`
answers for `TrialRunsCallback`. tests/test_legacy_resume.py resumes a job saved by the old
layout (tests/fixtures/legacy_state.tar.gz).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

# Old module path -> where its pickled names live now.
MOVED = {
    "tuning_platform.checkpoints": "tuning_platform.execution.checkpoints",
    "tuning_platform.guard": "tuning_platform.execution.guard",
    "tuning_platform.interrupt": "tuning_platform.execution.interrupt",
    "tuning_platform.memory": "tuning_platform.execution.memory",
    "tuning_platform.warm_up": "tuning_platform.execution.warm_up",
    "tuning_platform.tuner": "tuning_platform.execution.tuner",
    "tuning_platform.sampler": "tuning_platform.search.sampler",
    "tuning_platform.waiting": "tuning_platform.cluster.waiting",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module it moved to (one module object, two names)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._own_specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Already executed under its new name; importlib set the old name's spec on it since,
        so it gets its own back."""
        module.__spec__ = self._own_specs.pop(module.__name__, module.__spec__)


def install() -> None:
    """Once per process, from `tuning_platform/__init__.py` (cheap: nothing is imported)."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
