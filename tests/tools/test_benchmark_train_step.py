"""tools/benchmark/train_step.py end to end: one round of two variants, report files written."""

from __future__ import annotations

import json
import subprocess
import sys

from train_net_helpers import REPO, train_net_env


def test_train_step_benchmark_writes_its_report(tmp_path):
    command = [
        sys.executable,
        "-m",
        "tools.benchmark.train_step",
        "--threads", "1", "--rounds", "1", "--warmup", "0", "--output-dir", str(tmp_path),
        "--variant", "config",
        "--variant", "batch_4", "SOLVER.IMS_PER_BATCH", "4",
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=REPO, env=train_net_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "train_step_cpu.json").read_text())
    rows = {r["variant"]: r for r in summary["rows"]}
    assert rows["config"]["ratio_per_image"] == 1.0 and rows["config"]["batch_size"] == 8
    batch_4 = rows["batch_4"]
    assert batch_4["batch_size"] == 4 and batch_4["seconds_per_step"] > 0
    assert abs(batch_4["seconds_per_image"] - batch_4["seconds_per_step"] / 4) < 1e-12
    assert "| batch_4 | 4 |" in (tmp_path / "train_step_cpu.md").read_text()
    parts = summary["breakdown_of_first"]
    assert set(parts) == {
        "prepare", "backbone", "pixel_decoder", "decoder", "criterion", "backward", "optimizer",
        "load_batch",
    }  # fmt: skip
    assert all(seconds > 0 for seconds in parts.values())

    bad = subprocess.run(
        [*command[:3], "--variant", "odd", "SOLVER.IMS_PER_BATCH"],
        cwd=REPO, env=train_net_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "KEY VALUE pairs" in bad.stderr
