"""tools/gpu_check.sh: its dry run on the CPU (every step, tiny inputs), its bookkeeping of
failing steps, and the detectron2-free `make run` model its training smoke run trains."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from tools.benchmark import train_step

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_check.sh"
STEPS = [
    "environment",
    "build_cuda",
    "cuda_tests",
    "ms_deform_attn",
    "train_bf16",
    "bench_fp32",
    "bench_bf16",
]


def run_check(out: Path, python: str, *args: str, timeout: int = 300):
    if not shutil.which("bash") or not shutil.which("timeout"):
        pytest.skip("gpu_check.sh needs bash and coreutils' timeout")
    # One thread: the dry run is a test, and the machine may be busy with training runs.
    env = {**os.environ, "PYTHON": python, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    command = ["bash", str(SCRIPT), "--dry-run", "--out", str(out), *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def summary_rows(out: Path):
    """The step table of gpu_check.md as {step: (status, exit, wall, note)}."""
    rows = {}
    for line in (out / "gpu_check.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in STEPS:
            rows[cells[0]] = (cells[1], cells[2], cells[3], cells[6])
    return rows


def test_dry_run_runs_every_step_and_writes_the_reports(tmp_path):
    for module in ("timm", "transformers", "fvcore", "matplotlib"):
        pytest.importorskip(module)
    from clusterformer.modeling.ops import extension_available

    if not extension_available("cpu"):
        pytest.skip("clusterformer._C is not built (make build-modern)")
    proc = run_check(tmp_path, sys.executable)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

    rows = summary_rows(tmp_path)
    assert list(rows) == STEPS
    statuses = {step: row[0] for step, row in rows.items()}
    assert statuses == {
        **dict.fromkeys(STEPS, "ok"),
        "build_cuda": "skipped",
        "cuda_tests": "skipped",
    }
    assert re.fullmatch(
        r"\d+ tests: 0 passed, 0 failed, \d+ skipped \(dry run: no GPU\)", rows["cuda_tests"][3]
    )
    assert all(float(row[2]) >= 0 for row in rows.values())
    summary = (tmp_path / "gpu_check.md").read_text()
    assert "dry run on the CPU" in summary and "7 of 7 steps ok or skipped, 0 failed" in summary
    # What the GPU machine would run is recorded too.
    for gpu_command in (
        "FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0",
        "-m cuda",
        "-m tools.benchmark.ms_deform_attn --devices cuda",
        "-m tools.benchmark.train_step --core --device cuda --amp",
        "-m tools.benchmark --device cuda --suites panoptic backbones components --panoptic-size 800 1344",
        "--amp --no-flops --suffix _bf16",
    ):
        assert gpu_command in summary, gpu_command
    for step in STEPS:
        assert (tmp_path / "logs" / f"{step}.log").is_file()

    cases = list(ET.parse(tmp_path / "cuda_tests.xml").iter("testcase"))
    assert cases and all(c.find("skipped") is not None for c in cases)
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert environment["mode"] == "dry" and environment["packages"]["torch"]
    assert environment["cuda_available"] is False  # the dry run hides any GPU

    fp32 = json.loads((tmp_path / "benchmark_cpu.json").read_text())
    bf16 = json.loads((tmp_path / "benchmark_cpu_bf16.json").read_text())
    assert fp32["meta"]["amp"] is False and bf16["meta"]["amp"] is True
    assert {r["suite"] for r in fp32["rows"]} == {"backbones", "components"}
    assert {r["suite"] for r in bf16["rows"]} == {"panoptic", "components"}
    assert all(r["latency_ms"] > 0 for r in fp32["rows"] + bf16["rows"])
    assert (tmp_path / "benchmark_cpu_bf16.md").is_file()

    attention = json.loads((tmp_path / "ms_deform_attn_cpu_quick.json").read_text())
    assert attention["results"] and attention["meta"]["device"] == "cpu"

    train = json.loads((tmp_path / "train_step_cpu_bf16.json").read_text())
    assert train["amp"] == "bf16 autocast" and train["model"].startswith("core")
    (row,) = train["rows"]
    assert row["batch_size"] == 2 and row["seconds_per_step"] > 0
    assert math.isfinite(row["last_loss"])
    assert "bf16 autocast" in (tmp_path / "train_step_cpu_bf16.md").read_text()


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path):
    # `false` as the interpreter: every step that runs fails at once.
    proc = run_check(tmp_path, "false", timeout=60)
    assert proc.returncode != 0
    rows = summary_rows(tmp_path)
    assert list(rows) == STEPS
    assert rows["build_cuda"][0] == "skipped"
    for step in STEPS:
        if step != "build_cuda":
            assert rows[step][0] == "FAILED", (step, rows[step])
    assert "6 failed" in (tmp_path / "gpu_check.md").read_text()

    spent = run_check(tmp_path / "spent", sys.executable, "--budget", "0", timeout=60)
    assert spent.returncode != 0
    rows = summary_rows(tmp_path / "spent")
    assert {rows[s][0] for s in STEPS if s != "build_cuda"} == {"not run (budget spent)"}


def test_core_model_is_the_make_run_model():
    """build_core_model (no detectron2) against Trainer.build_model of the make-run config:
    same parameters, same outputs with the same weights, same criterion and matcher."""
    if importlib.util.find_spec("detectron2") is None:
        pytest.skip("needs detectron2 (the reference environment)")
    from clusterformer.d2.config_files import load_config
    from clusterformer.engine import Trainer

    tool = train_step
    auxiliary = [
        "MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT", "1.0", "MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT", "1.0",
        "MODEL.CLUSTER_DECODER.TRAIN_NUM_POINTS", "256",
    ]  # fmt: skip
    for opts in ([], auxiliary):
        d2 = Trainer.build_model(load_config(str(REPO / tool.CONFIG), opts)).eval()
        core = tool.build_core_model({k: float(v) for k, v in zip(opts[::2], opts[1::2])}).eval()
        d2_state = d2.state_dict()
        assert {k: v.shape for k, v in core.state_dict().items()} == {
            k: v.shape for k, v in d2_state.items()
        }
        core.load_state_dict(d2_state)
        images = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            expected, actual = d2.predict(images), core.predict(images)
        for key in ("pred_logits", "pred_masks"):
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)

        def settings(module):
            return {k: repr(v) for k, v in vars(module).items() if not k.startswith("_")}

        assert settings(core.criterion) == settings(d2.criterion)
        assert settings(core.criterion.matcher) == settings(d2.criterion.matcher)


def test_core_scenes_are_panoptic_targets():
    tool = train_step
    images, targets = tool.core_scene_batch(np.random.default_rng(0), 2)
    assert images.shape == (2, 3, 160, 160) and images.dtype == torch.uint8
    for target in targets:
        masks, labels = target["masks"], target["labels"]
        assert masks.dtype == torch.bool and masks.shape[1:] == (160, 160)
        assert len(labels) == len(masks) and 0 <= labels.min() and labels.max() <= 6
        assert (labels >= 4).any() and (labels < 4).any()  # stuff and things
        assert masks.sum(0).max() == 1  # one segment per pixel
