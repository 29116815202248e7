"""What runs inside a trial. Knows nothing of MLflow or YAML.

Each built-in trainable is a module exposing `train(config, data=None)` (the Ray Tune
function), `TASK` (data, model and evaluation for the shared loop), `load_data`, `DataConfig`
(its `data` block) and `METRICS` (what it reports).
`TASK.baseline`, when set, is a simple reference model the job logs on its parent run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TRAINABLES = {
    "cnn": "trainables.cnn",
    "mlp": "trainables.mlp",
    "recommender": "trainables.recommender",
    "fraud": "trainables.fraud",
}


def builtin(name: str) -> ModuleType:
    """The module of a built-in trainable; imported on demand because torch is slow to load."""
    return importlib.import_module(TRAINABLES[name])
