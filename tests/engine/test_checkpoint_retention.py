"""``SOLVER.MAX_TO_KEEP``: only the newest periodic checkpoints stay, across ``--resume`` too."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from train_net_helpers import CLS_CONFIG, read_metrics, run_train_net

from clusterformer.d2.config_files import load_config
from clusterformer.engine import ClusterFormerCheckpointer, Trainer
from clusterformer.engine.hooks import PeriodicCheckpointer
from clusterformer.engine.trainer import check_config


def checkpoint_files(folder) -> set:
    return {name for name in os.listdir(folder) if name.endswith(".pth")}


def last_checkpoint(folder) -> str:
    with open(os.path.join(folder, "last_checkpoint")) as f:
        return f.read().strip()


def test_hook_keeps_the_newest_periodic_checkpoints_of_the_folder(tmp_path):
    checkpointer = ClusterFormerCheckpointer(nn.Linear(2, 2), str(tmp_path))
    # Left by earlier runs in the same folder: an older periodic checkpoint (counted), a later
    # one of a run that went further (not this run's to delete), and a final one.
    for name in ("model_0000000", "model_0000099", "model_final"):
        checkpointer.save(name, iteration=0)
    hook = PeriodicCheckpointer(checkpointer, period=2, max_to_keep=2)
    for iteration in range(1, 9):
        hook.step(iteration)
    # Saved at 1, 3, 5, 7; the two newest up to 7 stay.
    assert checkpoint_files(tmp_path) == {
        "model_0000005.pth",
        "model_0000007.pth",
        "model_0000099.pth",
        "model_final.pth",
    }
    assert last_checkpoint(tmp_path) == "model_0000007.pth"

    # The file last_checkpoint names is never deleted, even when it is not among the newest.
    checkpointer.tag_last_checkpoint("model_0000005.pth")
    torch.save({"model": {}}, tmp_path / "model_0000006.pth")
    assert hook.delete_old_checkpoints(7) == []  # 5 is named, 6 and 7 are the newest two
    with open(tmp_path / "model_0000004.pth", "wb"):
        pass
    assert [os.path.basename(p) for p in hook.delete_old_checkpoints(7)] == ["model_0000004.pth"]


def test_no_limit_keeps_every_checkpoint(tmp_path):
    checkpointer = ClusterFormerCheckpointer(nn.Linear(2, 2), str(tmp_path))
    hook = PeriodicCheckpointer(checkpointer, period=1)
    for iteration in range(4):
        hook.step(iteration)
    assert checkpoint_files(tmp_path) == {f"model_{i:07d}.pth" for i in range(4)}


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "True", "'3'"])
def test_bad_max_to_keep_is_an_error_naming_the_key(value):
    cfg = load_config(CLS_CONFIG, ["SOLVER.MAX_TO_KEEP", value])
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_TO_KEEP=.*positive integer"):
        check_config(cfg)
    # The trainer checks it before building anything.
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_TO_KEEP"):
        Trainer(cfg)
    with pytest.raises(ValueError, match=r"SOLVER\.MAX_TO_KEEP"):
        PeriodicCheckpointer(None, period=1, max_to_keep=cfg.SOLVER.MAX_TO_KEEP)


@pytest.mark.slow
def test_training_keeps_two_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    common = (
        "--config-file",
        CLS_CONFIG,
        "OUTPUT_DIR",
        str(out),
        "SOLVER.IMS_PER_BATCH",
        "8",
        "SOLVER.WARMUP_ITERS",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "SOLVER.MAX_TO_KEEP",
        "2",
        "SOLVER.LOG_PERIOD",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
        "DATASETS.TEST",
        "()",
    )
    env = {"OMP_NUM_THREADS": "1"}
    run_train_net(*common, "SOLVER.MAX_ITER", "8", env=env)
    # Periodic checkpoints at iterations 1, 3, 5, 7: the last two and the final one stay.
    assert checkpoint_files(out) == {"model_0000005.pth", "model_0000007.pth", "model_final.pth"}

    # --resume from model_final (iteration 7) to 12: checkpoints at 9 and 11 replace the first
    # run's two, which this process did not write.
    proc = run_train_net("--resume", *common, "SOLVER.MAX_ITER", "12", env=env)
    assert "Deleted 1 old checkpoint(s)" in proc.stdout + proc.stderr
    assert checkpoint_files(out) == {"model_0000009.pth", "model_0000011.pth", "model_final.pth"}
    assert last_checkpoint(out) == "model_final.pth"
    iterations = [m["iteration"] for m in read_metrics(out) if "total_loss" in m]
    assert iterations == list(range(12)), iterations
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 11
