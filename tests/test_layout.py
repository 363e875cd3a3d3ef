"""The test tree mirrors the repository, and the list of tests that need detectron2 is current."""

from __future__ import annotations

import fnmatch
from collections import Counter
from pathlib import Path

from conftest import NEEDS_DETECTRON2

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SUPPORT = "support"


def _test_modules() -> list:
    return sorted(
        p.relative_to(TESTS).as_posix()
        for p in TESTS.rglob("test_*.py")
        if SUPPORT not in p.relative_to(TESTS).parts[:1]
    )


def test_every_test_folder_mirrors_a_package_or_repository_folder():
    """``tests/a/b/`` tests ``clusterformer/a/b/`` or the repository's own ``a/b/`` (``tools/``,
    ``demo/``, ``datasets/``)."""
    unmirrored = []
    for path in sorted({Path(f).parent for f in _test_modules()} - {Path(".")}):
        if not ((REPO / "clusterformer" / path).is_dir() or (REPO / path).is_dir()):
            unmirrored.append(f"tests/{path.as_posix()}")
    assert not unmirrored, f"test folders that mirror no folder of the repository: {unmirrored}"


def test_test_module_names_are_unique():
    """pytest imports test modules by file name (no ``__init__.py``): two files of one name in
    different folders would collide."""
    names = Counter(Path(f).name for f in _test_modules())
    assert not [n for n, count in names.items() if count > 1]


def test_every_needs_detectron2_entry_names_tests():
    """An entry that matches no test file is stale (a test renamed or moved), and would keep a
    later file of that name out of the modern environment without a word."""
    files = _test_modules()
    stale = [glob for glob in NEEDS_DETECTRON2 if not fnmatch.filter(files, glob)]
    assert not stale, f"NEEDS_DETECTRON2 entries that match no test under tests/: {stale}"
