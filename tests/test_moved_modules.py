"""The import paths Tune pickled by older releases of this package still load (the whole resume
is tests/test_legacy_resume.py, slow); each name a saved job holds is where it was."""

from __future__ import annotations

import importlib
import pickle

import pytest

from tuning_platform._compat.moved import MOVED

# What a job saved by the flat layout (commit aaa982e) pickled, by module and name.
PICKLED = [
    ("tuning_platform.checkpoints", "SurvivingCheckpoints"),
    ("tuning_platform.guard", "TrialGuard"),
    ("tuning_platform.interrupt", "TrialOutcomes"),
    ("tuning_platform.memory", "FreedMemoryReturned"),
    ("tuning_platform.warm_up", "PicturesWarmedUp"),
    ("tuning_platform.tuner", "_trial_dirname"),
    ("tuning_platform.sampler", "WindowedTPESampler"),
    ("tuning_platform.waiting", "WaitingForNodes"),
    ("tuning_platform.tracking", "TrialRunsCallback"),
]


@pytest.mark.parametrize(("old", "name"), PICKLED)
def test_a_name_pickled_by_the_old_layout_loads_from_its_new_home(old, name):
    found = getattr(importlib.import_module(old), name)
    assert found.__module__ != old  # it lives in a package now
    # What pickle does with a saved reference: find the module by its old path, then the name.
    assert pickle.loads(pickle.dumps(found)) is found
    assert pickle.loads(b"\x80\x04\x95" + _global_reference(old, name)) is found


def test_an_old_path_is_the_same_module_as_its_new_one():
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new)
        assert importlib.import_module(new).__spec__.name == new


def _global_reference(module: str, name: str) -> bytes:
    """A protocol-4 pickle body of one global reference `module.name`, as Tune's saved state has."""
    body = b"\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode() + b"\x93."
    return len(body).to_bytes(8, "little") + body
