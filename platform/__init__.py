"""The tuning platform's package, standing in for the standard library's `platform`.

`python -m platform.tune` puts the repository root first on `sys.path`, so this package is
imported as `platform` by everything in that process: torch, ray, mlflow and pytest call
`platform.system()`, `platform.python_version()` and friends. We therefore load the standard
library module from its own file and re-export every name it defines, so both
`platform.system()` and `platform.tune` work. Nothing else belongs in this file.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys

_STDLIB_PATH = _os.path.join(_os.path.dirname(_os.__file__), "platform.py")
_spec = _importlib_util.spec_from_file_location("_stdlib_platform", _STDLIB_PATH)
_stdlib_platform = _importlib_util.module_from_spec(_spec)
# Registered before executing so functions that look up their own module (pickling,
# dataclasses, typing) find it.
_sys.modules["_stdlib_platform"] = _stdlib_platform
_spec.loader.exec_module(_stdlib_platform)

globals().update({name: value for name, value in vars(_stdlib_platform).items() if not name.startswith("__")})
__doc__ = (__doc__ or "") + "\n\nStandard library documentation:\n\n" + (_stdlib_platform.__doc__ or "")
