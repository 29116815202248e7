"""Our `platform` package must be a perfect stand-in for the standard library module."""

import importlib.util
import os
import subprocess
import sys

import platform
from tests.helpers import ROOT


def _stdlib_platform():
    path = os.path.join(os.path.dirname(os.__file__), "platform.py")
    spec = importlib.util.spec_from_file_location("_reference_platform", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_of_the_standard_module_is_reexported():
    reference = _stdlib_platform()
    public = [name for name in dir(reference) if not name.startswith("_")]
    assert public, "the standard module has public names"
    missing = [name for name in public if not hasattr(platform, name)]
    assert missing == []
    for name in public:
        ours, theirs = getattr(platform, name), getattr(reference, name)
        if hasattr(theirs, "__code__"):  # the same function from the same file and line
            assert ours.__code__.co_filename == theirs.__code__.co_filename, name
            assert ours.__code__.co_firstlineno == theirs.__code__.co_firstlineno, name
        elif callable(theirs):
            assert ours.__qualname__ == theirs.__qualname__, name
        else:
            assert ours == theirs, name


def test_functions_answer_like_the_standard_module():
    reference = _stdlib_platform()
    assert platform.system() == reference.system()
    assert platform.python_version() == reference.python_version()
    assert platform.machine() == reference.machine()
    assert tuple(platform.uname()) == tuple(reference.uname())


def test_package_is_ours_and_has_the_cli():
    assert hasattr(platform, "__path__"), "platform must be the project's package under pytest"
    import platform.tune as cli

    assert callable(cli.main)


def test_plain_pytest_entry_point_imports_the_package():
    """`pytest` (not `python -m pytest`) imports the standard module first; conftest swaps it."""
    pytest_bin = os.path.join(os.path.dirname(sys.executable), "pytest")
    result = subprocess.run(
        [
            pytest_bin,
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_platform_name.py",
            "-k",
            "package_is_ours or functions_answer or every_public_name",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
