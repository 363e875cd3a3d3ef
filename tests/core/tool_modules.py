"""Load a script of ``tools/`` as a module (the tools are scripts, not a package)."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` (``name`` may name a subfolder: ``experiments/ablation``), executed as
    a fresh module. It is registered in ``sys.modules`` first, as an import would, because
    dataclasses look their module up there."""
    module_name = name.replace("/", ".")
    spec = importlib.util.spec_from_file_location(module_name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
