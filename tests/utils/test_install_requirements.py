"""setup.cfg declares what the package imports, and OpenCV is accepted from either package."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from pathlib import Path
from typing import Set

import pytest

from clusterformer.utils import opencv

REPO = Path(__file__).resolve().parents[2]
# Import name -> the distribution that provides it.
DISTRIBUTIONS = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "panopticapi": "panopticapi-lite",
}
# Imported, but deliberately not in install_requires: detectron2 is not on PyPI (docs/install.md);
# cv2 comes from the user's choice of OpenCV package; the rest are imported only inside the
# function that needs them and are in an extra (deploy) or named in the error (safetensors).
NOT_REQUIRED = {"detectron2", "cv2", "onnx", "onnxruntime", "safetensors"}


def install_requires() -> Set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].strip().splitlines()
    return {re.split(r"[<>=!~;\[ ]", line.strip())[0].lower() for line in lines if line.strip()}


def third_party_imports() -> Set[str]:
    names = set()
    for path in (REPO / "clusterformer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "clusterformer"}


def test_every_imported_package_is_declared():
    declared = install_requires()
    missing = {
        DISTRIBUTIONS.get(name, name).lower()
        for name in third_party_imports() - NOT_REQUIRED
        if DISTRIBUTIONS.get(name, name).lower() not in declared
    }
    assert not missing, (
        f"imported by clusterformer/ but not in setup.cfg install_requires: {missing}"
    )
    # Detectron2's COCOPanopticEvaluator (clusterformer.evaluation) imports panopticapi.
    assert "panopticapi-lite" in declared and "torchvision" in declared


def test_no_opencv_package_is_forced_on_the_user():
    """Either OpenCV package must do: requiring one makes pip install it over the other."""
    assert not {d for d in install_requires() if d.startswith("opencv")}


def test_missing_opencv_names_both_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` fail as if not installed
    with pytest.raises(ImportError, match="'opencv-python'.*'opencv-python-headless'"):
        opencv.import_cv2()
