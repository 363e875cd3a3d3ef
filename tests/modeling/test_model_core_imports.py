"""The model core (``clusterformer.modeling``) is plain PyTorch: none of its files imports
detectron2, and importing the package or any of its modules loads no detectron2 module.

The Detectron2 layer is ``clusterformer.d2``; a core module that needs detectron2 belongs there.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_CORE = REPO_ROOT / "clusterformer" / "modeling"


def detectron2_imports(path: Path) -> list:
    """``(line, module)`` of every import of detectron2 in ``path``, at any depth (function-level
    imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [(node.lineno, m) for m in modules if m.split(".")[0] == "detectron2"]
    return found


def test_no_model_core_file_imports_detectron2():
    files = sorted(MODEL_CORE.rglob("*.py"))
    assert len(files) > 20  # the walk found the core
    offenders = {
        str(f.relative_to(REPO_ROOT)): imports for f in files if (imports := detectron2_imports(f))
    }
    assert not offenders, (
        f"the model core imports detectron2 (move it to clusterformer/d2): {offenders}"
    )


def test_the_check_sees_a_function_level_import(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text(
        "def f():\n    from detectron2.layers import ShapeSpec\n    return ShapeSpec\n"
    )
    assert detectron2_imports(module) == [(2, "detectron2.layers")]


def test_importing_every_model_core_module_loads_no_detectron2():
    """In a fresh interpreter (this one may have imported detectron2 for other tests), and with
    detectron2 made unimportable, so that it fails the same where detectron2 is not installed."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["detectron2"] = None  # any `import detectron2...` now raises ImportError
        import clusterformer
        import clusterformer.modeling
        names = [m.name for m in pkgutil.walk_packages(
            clusterformer.modeling.__path__, "clusterformer.modeling.")]
        for name in names:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.startswith("detectron2."))
        assert not loaded, loaded
        assert "clusterformer.d2" not in sys.modules
        print(len(names), "modules")
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) > 20


def test_package_level_d2_names_say_detectron2_is_needed(monkeypatch):
    import clusterformer

    monkeypatch.setattr(clusterformer, "detectron2_available", lambda: False)
    with pytest.raises(ImportError, match="needs detectron2"):
        from clusterformer import add_clusterformer_config  # noqa: F401
    with pytest.raises(AttributeError):
        clusterformer.no_such_name  # noqa: B018
