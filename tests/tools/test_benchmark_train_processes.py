"""tools/benchmark/train_processes.py: Detectron2's speed line parsed, and one round of one and
two training processes end to end with its report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_net_helpers import REPO, train_net_env

from tools.benchmark.train_processes import seconds_per_iteration


def test_seconds_per_iteration_reads_detectron2s_overall_speed():
    log = (
        "[12/07 10:38:04 d2.engine.hooks]: Overall training speed: 118 iterations in 0:00:56 "
        "(0.4772 s / it)\n[12/07 10:38:04 d2.engine.hooks]: Total training time: 0:00:56\n"
    )
    assert seconds_per_iteration(log) == 0.4772
    with pytest.raises(ValueError, match="Overall training speed"):
        seconds_per_iteration("[12/07 10:38:04 d2.engine.hooks]: Total training time: 0:00:56\n")


@pytest.mark.slow
def test_one_round_of_one_and_two_processes_writes_its_report(tmp_path):
    command = [
        sys.executable, "-m", "tools.benchmark.train_processes",
        "--processes", "1", "2", "--iterations", "6", "--rounds", "1", "--batch", "2",
        "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=REPO, env=train_net_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "train_processes_cpu.json").read_text())
    assert result["processes"] == [1, 2] and result["batch"] == 2
    assert all(len(v) == 1 and v[0] > 0 for v in result["seconds"].values())
    assert result["median_seconds"]["2"] == result["seconds"]["2"][0]
    report = (tmp_path / "train_processes_cpu.md").read_text()
    assert "| 1 |" in report and "| 1.00x |" in report and "| 2 |" in report

    odd = subprocess.run(
        [*command[:3], "--processes", "3", "--batch", "8"],
        cwd=REPO, env=train_net_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert odd.returncode != 0 and "must split evenly" in odd.stderr
