"""The repository root's `platform/` stands in for the standard library's module so that
`python -m platform.tune` keeps working there; nothing outside the repository root sees it."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, assert_ok

# Run from the repository root with `-c`, as `python -m platform.tune` runs: the root is first
# on sys.path, so `platform` is the stand-in.
AT_ROOT = """
import importlib.util, os, pickle, sys
import platform
assert hasattr(platform, "__path__"), "the stand-in package"
path = os.path.join(os.path.dirname(os.__file__), "platform.py")
spec = importlib.util.spec_from_file_location("_reference", path)
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
public = [name for name in dir(reference) if not name.startswith("_")]
assert public and [name for name in public if not hasattr(platform, name)] == []
for name in public:
    theirs, ours = getattr(reference, name), getattr(platform, name)
    if hasattr(theirs, "__code__"):
        assert (ours.__code__.co_filename, ours.__code__.co_firstlineno) == (
            theirs.__code__.co_filename, theirs.__code__.co_firstlineno), name
assert platform.system() == reference.system() and tuple(platform.uname()) == tuple(reference.uname())
assert "_stdlib_platform" not in sys.modules
import platform.tune
sys.stdout.buffer.write(pickle.dumps((platform.uname(), platform.system)))
"""


# A normal process elsewhere, where `platform` is the standard module.
ELSEWHERE = """
import pickle, platform, sys
assert not hasattr(platform, "__path__")
uname, system = pickle.loads(sys.stdin.buffer.read())
assert type(uname) is platform.uname_result and tuple(uname) == tuple(platform.uname())
assert system is platform.system
print("loaded")
"""


def test_the_stand_in_answers_like_the_standard_module_and_what_it_pickles_loads_anywhere(tmp_path):
    made = subprocess.run([sys.executable, "-c", AT_ROOT], cwd=ROOT, capture_output=True, timeout=120)
    assert_ok(made)
    loaded = subprocess.run(
        [sys.executable, "-c", ELSEWHERE], cwd=tmp_path, input=made.stdout, capture_output=True, timeout=120
    )
    assert_ok(loaded)
    assert loaded.stdout.decode().strip() == "loaded"


def test_python_m_platform_tune_works_from_the_repository_root():
    result = subprocess.run(
        [sys.executable, "-m", "platform.tune", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert_ok(result)
    assert result.stdout.startswith("usage: python -m platform.tune")


def test_outside_the_repository_platform_is_the_standard_module_and_the_tool_imports(tmp_path):
    """A notebook: `uuid` imports the standard `platform` first; the tool has its own name.
    The tool is found where `pip install` put it (the README's test command installs it)."""
    code = (
        "import uuid, platform, sys\n"
        "import tuning_platform\n"
        "from tuning_platform import tune, TuneResult, SpecError\n"
        "assert not hasattr(platform, '__path__') and callable(tune)\n"
        "assert 'platform.tune' not in sys.modules and '_stdlib_platform' not in sys.modules\n"
        "print(platform.system())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert_ok(result)
    assert result.stdout.strip() == "Linux"
