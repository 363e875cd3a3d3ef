"""tools/compare_revisions.py: the working tree's benchmark replaces a revision's, whichever
layout that revision has (the package tools/benchmark/ or the scripts before it)."""

import os
from pathlib import Path

from tools import compare_revisions

REPO = Path(__file__).resolve().parents[2]


def test_the_working_trees_benchmark_replaces_a_single_file_revisions(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("benchmark.py", "benchmark_common.py", "count_params_flops.py"):
        (tools / name).write_text("# before\n")
    compare_revisions.install_benchmark(str(REPO), str(tmp_path))
    assert not (tools / "benchmark.py").exists() and not (tools / "benchmark_common.py").exists()
    assert (tools / "__init__.py").is_file() and (tools / "benchmark" / "__main__.py").is_file()
    assert (tools / "count_params_flops.py").read_text() == (
        REPO / "tools" / "count_params_flops.py"
    ).read_text()
    assert not list(tools.rglob("__pycache__"))


def test_a_package_revisions_benchmark_is_replaced_whole(tmp_path):
    package = tmp_path / "tools" / "benchmark"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("# before\n")
    (package / "gone.py").write_text("# a module the working tree no longer has\n")
    (tmp_path / "tools" / "count_params_flops.py").write_text("# before\n")
    compare_revisions.install_benchmark(str(REPO), str(tmp_path))
    names = sorted(os.listdir(package))
    assert names == sorted(
        p.name for p in (REPO / "tools" / "benchmark").iterdir() if p.name != "__pycache__"
    )
    assert (package / "__init__.py").read_text() == (
        REPO / "tools" / "benchmark" / "__init__.py"
    ).read_text()
