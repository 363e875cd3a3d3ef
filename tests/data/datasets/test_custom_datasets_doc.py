"""docs/custom_datasets.md's worked example runs as written (with few images and iterations).

The commands of the example's bash block run in a temporary folder that links the repository's
``train_net.py``, ``demo/``, ``configs/`` and ``docs/``, so the relative paths of the page
(``my_data``, ``output/my_data``) land there. Each command gets overrides appended that make it
small (later ``KEY VALUE`` pairs and options win).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from typing import List

import pytest
from train_net_helpers import REPO, train_net_env

pytestmark = pytest.mark.slow

DOC = os.path.join(REPO, "docs", "custom_datasets.md")
SMALL = {
    "clusterformer.data.datasets.shapes": [
        "--num-train-images",
        "8",
        "--num-val-images",
        "4",
        "--classification-train-per-class",
        "1",
        "--classification-val-per-class",
        "1",
    ],
    "train_net.py": [
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
    ],
    "demo/demo.py": ["MODEL.DEVICE", "cpu"],  # inside --opts, the demo's last option
}


def example_commands() -> List[List[str]]:
    """The ``python ...`` lines of the worked example's bash block, split as the shell does."""
    with open(DOC) as f:
        text = f.read()
    section = text[text.index("## Worked example") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python ")]


def small(command: List[str]) -> List[str]:
    for marker, extra in SMALL.items():
        if marker in command:
            return [sys.executable, *command[1:], *extra]
    raise AssertionError(f"unexpected command in {DOC}: {command}")


@pytest.mark.timeout(600)
def test_worked_example_trains_evaluates_and_draws(tmp_path):
    for entry in ("train_net.py", "demo", "configs", "docs"):
        (tmp_path / entry).symlink_to(os.path.join(REPO, entry))
    commands = example_commands()
    assert len(commands) == 4
    for command in commands:
        proc = subprocess.run(
            small(command),
            cwd=tmp_path,
            env=train_net_env({"OMP_NUM_THREADS": "1"}),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    out = tmp_path / "output" / "my_data"
    for results_dir in (out, out / "eval"):
        with open(results_dir / "eval_results.json") as f:
            results = json.load(f)
        assert {"bbox", "segm"} <= set(results), results
    assert (out / "model_final.pth").is_file()
    log = (out / "log.txt").read_text()
    assert "Command line: " in log and "--register docs/examples/register_coco_folder.py" in log
    assert (out / "demo" / "000001000001.png").is_file()
