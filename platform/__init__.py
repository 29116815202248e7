"""`python -m platform.tune` from the repository root: the standard library's `platform`, plus `tune`.

The tool itself is the `tuning_platform` package (`tuning-platform` on the command line); this
folder exists only so that the command our users were first given keeps working from the
repository root. It is not installed with the package (see docs/DESIGN.md, "The name").

`python -m platform.tune` puts the repository root first on `sys.path`, so this package is
imported as `platform` by everything in that process: torch, ray, mlflow and pytest call
`platform.system()`, `platform.python_version()` and friends. We therefore load the standard
library module from its own file and re-export every name it defines.

Its classes and functions are renamed back to the module `platform`, so that what they make
pickles as `platform.uname_result` and unpickles in any process, where `platform` is the
standard module (tests/test_platform_name.py holds this). Nothing else belongs in this file.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

_STDLIB_PATH = _os.path.join(_os.path.dirname(_os.__file__), "platform.py")
_spec = _importlib_util.spec_from_file_location("_stdlib_platform", _STDLIB_PATH)
_stdlib_platform = _importlib_util.module_from_spec(_spec)
# Registered while executing, so functions that look up their own module (dataclasses,
# typing) find it; removed afterwards, since every name it defines now lives here.
_sys.modules["_stdlib_platform"] = _stdlib_platform
try:
    _spec.loader.exec_module(_stdlib_platform)
finally:
    del _sys.modules["_stdlib_platform"]

for _name, _value in vars(_stdlib_platform).items():
    if _name.startswith("__"):
        continue
    if getattr(_value, "__module__", None) == "_stdlib_platform":
        _value.__module__ = "platform"
    globals()[_name] = _value
__doc__ = (__doc__ or "") + "\n\nStandard library documentation:\n\n" + (_stdlib_platform.__doc__ or "")
