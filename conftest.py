"""Make `platform.tune` importable under plain `pytest`.

Plain `pytest` imports the standard library's `platform` before the repository root is on
`sys.path`, so `import platform.tune` would find a module, not our package. Our package
re-exports every name of the standard module (see DESIGN.md, "The name"), so putting it in
its place is safe for everything that already holds the old module.
"""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _install_project_platform() -> None:
    current = sys.modules.get("platform")
    if current is not None and hasattr(current, "__path__"):
        return  # `python -m pytest`: the package was imported from the working directory
    spec = importlib.util.spec_from_file_location(
        "platform", ROOT / "platform" / "__init__.py", submodule_search_locations=[str(ROOT / "platform")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["platform"] = module
    spec.loader.exec_module(module)


if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
_install_project_platform()
