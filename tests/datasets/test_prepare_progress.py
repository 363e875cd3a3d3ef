"""The data-preparation scripts of datasets/ show their progress with the time left (tqdm)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fake_segmentation_data import make_ade, make_coco

REPO = Path(__file__).resolve().parents[2]
# tqdm's bar: "<description>: 100%|...| done/total [elapsed<time left, rate]".
FINISHED_BAR = r"{}: 100%\|[^|]*\| {n}/{n} \[\d\d:\d\d<\d\d:\d\d, [^\]]*file/s\]"


def run_script(name: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DETECTRON2_DATASETS": str(root), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "datasets" / f"{name}.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ade20k_scripts_show_progress_per_split(tmp_path, workers):
    make_ade(tmp_path, num_images=3)
    for script in ("prepare_ade20k_sem_seg", "prepare_ade20k_pan_seg"):
        stderr = run_script(script, tmp_path, "--workers", workers).stderr
        for split in ("training", "validation"):
            assert re.search(FINISHED_BAR.format(split, n=3), stderr), (script, stderr)


def test_coco_script_shows_progress(tmp_path):
    make_coco(tmp_path, split="val2017", num_images=3)
    stderr = run_script(
        "prepare_coco_semantic_annos_from_panoptic_annos",
        tmp_path,
        "--splits",
        "val2017",
        "--workers",
        "2",
    ).stderr
    assert re.search(FINISHED_BAR.format("panoptic_semseg_val2017", n=3), stderr), stderr
