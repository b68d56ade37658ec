"""Shared by the bench and diagnostics tests: both are folders of scripts, not packages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str, folder: str = "bench") -> ModuleType:
    """<folder>/<name>.py loaded as the module ``<folder>_<name>`` (registered in
    sys.modules so its dataclasses and pickling work), its folder on sys.path as when run."""
    if str(ROOT / folder) not in sys.path:
        sys.path.append(str(ROOT / folder))
    spec = importlib.util.spec_from_file_location(f"{folder}_{name}", ROOT / folder / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
