"""ClusterFormerCheckpointer: atomic saves, no pickled code on load, and the shape policy."""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from train_net_helpers import CLS_CONFIG, PANOPTIC_CONFIG, REPO, run_train_net, train_net_env

import clusterformer.engine.checkpointer as checkpointer_module
from clusterformer.d2.config_files import load_config
from clusterformer.engine import (
    CheckpointMismatchError,
    ClusterFormerCheckpointer,
    Trainer,
    UnsafeCheckpointError,
)


class Tiny(nn.Module):
    def __init__(self, width: int = 3, classes: int = 2):
        super().__init__()
        self.body = nn.Linear(4, width)
        self.head = nn.Linear(width, classes)


def filled(model: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)
    return model


def read_text(path) -> str:
    with open(path) as f:
        return f.read()


class RecordLogs(logging.Handler):
    """Collects the messages of the checkpoint loggers (Detectron2 may stop their propagation)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def checkpoint_logs():
    handler = RecordLogs()
    loggers = [
        logging.getLogger(n) for n in ("fvcore.common.checkpoint", checkpointer_module.__name__)
    ]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


# ---- atomic saves ------------------------------------------------------------------------


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer = ClusterFormerCheckpointer(filled(Tiny(), 1.0), str(tmp_path))
    checkpointer.save("model_a", iteration=1)
    assert read_text(tmp_path / "last_checkpoint") == "model_a.pth"

    def write_half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (injected)")

    checkpointer.model = filled(Tiny(), 2.0)
    monkeypatch.setattr(checkpointer_module.torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="injected"):
        checkpointer.save("model_b", iteration=2)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_a.pth"]  # no temp file
    assert read_text(tmp_path / "last_checkpoint") == "model_a.pth"
    restored = Tiny()
    extra = ClusterFormerCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and (restored.body.weight == 1.0).all()


def test_failed_tag_update_keeps_the_previous_last_checkpoint(tmp_path, monkeypatch):
    checkpointer = ClusterFormerCheckpointer(filled(Tiny(), 1.0), str(tmp_path))
    checkpointer.save("model_a")
    real_replace = os.replace

    def fail_for_the_tag(source, destination):
        if os.path.basename(destination) == "last_checkpoint":
            raise OSError("crash while tagging (injected)")
        return real_replace(source, destination)

    monkeypatch.setattr(checkpointer_module.os, "replace", fail_for_the_tag)
    with pytest.raises(OSError, match="injected"):
        checkpointer.save("model_b")
    monkeypatch.undo()
    # model_b.pth is complete, but last_checkpoint still names the complete model_a.pth.
    assert read_text(tmp_path / "last_checkpoint") == "model_a.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_a.pth", "model_b.pth"]


KILLED_WHILE_WRITING = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    sys.path.insert(0, {repo!r})
    sys.path[:0] = [{tests!r}, {support!r}]
    import clusterformer.engine.checkpointer as module
    from test_checkpointer import Tiny, filled

    checkpointer = module.ClusterFormerCheckpointer(filled(Tiny(), 1.0), {out!r})
    checkpointer.save("model_a", iteration=1)

    def write_half_then_die(obj, f):
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    module.torch.save = write_half_then_die
    checkpointer.model = filled(Tiny(), 2.0)
    checkpointer.save("model_b", iteration=2)
    """
)


def test_process_killed_while_writing_leaves_a_resumable_folder(tmp_path):
    script = KILLED_WHILE_WRITING.format(
        repo=REPO,
        tests=os.path.dirname(os.path.abspath(__file__)),
        support=os.path.join(REPO, "tests", "support"),
        out=str(tmp_path),
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=train_net_env(), capture_output=True, text=True
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 3 and names[0].startswith(".model_b.pth.tmp-")  # the partial write
    assert names[1:] == ["last_checkpoint", "model_a.pth"]
    assert read_text(tmp_path / "last_checkpoint") == "model_a.pth"
    restored = Tiny()
    extra = ClusterFormerCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1 and (restored.head.weight == 1.0).all()


# ---- loading without executing pickled code ----------------------------------------------


class WritesAMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for arbitrary code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pth_with_pickled_code_is_refused_before_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": Tiny().state_dict(), "payload": WritesAMarker(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pth.*WEIGHTS_ALLOW_PICKLE"):
        ClusterFormerCheckpointer(Tiny()).load(str(path))
    assert not marker.exists()


def test_pth_with_other_objects_loads_only_when_allowed(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": filled(Tiny(), 3.0).state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(UnsafeCheckpointError):
        ClusterFormerCheckpointer(Tiny()).load(str(path))
    model = Tiny()
    ClusterFormerCheckpointer(model, allow_pickle=True).load(str(path))
    assert (model.body.weight == 3.0).all()


def test_detectron2_pkl_format_loads_numpy_weights(tmp_path):
    weights = {k: v.numpy() + 5.0 for k, v in Tiny().state_dict().items()}
    path = tmp_path / "zoo.pkl"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(path, "wb") as f:
            pickle.dump({"model": weights, "__author__": "test"}, f, protocol=protocol)
        model = Tiny()
        ClusterFormerCheckpointer(model).load(str(path))
        np.testing.assert_allclose(model.head.bias.detach().numpy(), weights["head.bias"])


def test_pkl_with_pickled_code_is_refused_before_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "__author__": WritesAMarker(str(marker))}, f)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pkl.*wants to call \S*open"):
        ClusterFormerCheckpointer(Tiny()).load(str(path))
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_name_the_file(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": Tiny().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"model\.pth.*truncated"):
        ClusterFormerCheckpointer(Tiny()).load(str(path))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        ClusterFormerCheckpointer(Tiny()).load(str(tmp_path / "nowhere.pth"))


# ---- the shape policy ---------------------------------------------------------------------


def test_shape_mismatch_is_an_error_naming_the_keys_and_changes_nothing(tmp_path):
    path = tmp_path / "other_size.pth"
    torch.save({"model": filled(Tiny(width=5), 1.0).state_dict()}, path)
    model = filled(Tiny(width=3), 0.0)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"other_size\.pth.*3 key\(s\).*body\.weight: \(5, 4\) in checkpoint vs \(3, 4\) in model",
    ):
        ClusterFormerCheckpointer(model).load(str(path))
    assert all((p == 0).all() for p in model.parameters())  # refused before loading anything


def test_skip_mismatched_allows_chosen_keys(tmp_path, checkpoint_logs):
    path = tmp_path / "other_classes.pth"
    torch.save({"model": filled(Tiny(classes=7), 1.0).state_dict()}, path)
    model = filled(Tiny(classes=2), 0.0)
    ClusterFormerCheckpointer(model, skip_mismatched=[r"^head\."]).load(str(path))
    assert (model.body.weight == 1.0).all() and (model.head.weight == 0.0).all()
    assert any("head.weight" in m for m in checkpoint_logs)


def test_checkpoint_of_another_architecture_is_an_error(tmp_path):
    path = tmp_path / "unrelated.pth"
    torch.save({"model": nn.Conv2d(1, 1, 1).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"unrelated\.pth.*fits no part.*weight"):
        ClusterFormerCheckpointer(Tiny()).load(str(path))


def test_missing_and_unexpected_keys_are_warnings(tmp_path, checkpoint_logs):
    state = {
        "body.weight": torch.ones(3, 4),
        "body.bias": torch.ones(3),
        "extra.weight": torch.ones(1),
    }
    path = tmp_path / "partial.pth"
    torch.save(state, path)  # a bare state_dict is accepted too
    model = filled(Tiny(), 0.0)
    ClusterFormerCheckpointer(model).load(str(path))
    assert (model.body.weight == 1.0).all() and (model.head.weight == 0.0).all()
    log = "\n".join(checkpoint_logs)
    assert "not found in the checkpoint:\nhead.{bias, weight}" in log
    assert "not used by the model:\n  extra.weight" in log


def nano_models():
    classifier = Trainer.build_model(load_config(CLS_CONFIG))
    wider = Trainer.build_model(
        load_config(CLS_CONFIG, ["MODEL.CLUSTERFORMER_BACKBONE.EMBED_DIMS", "[48, 64, 128, 256]"])
    )
    segmenter = Trainer.build_model(load_config(PANOPTIC_CONFIG))
    return classifier, wider, segmenter


def test_classifier_checkpoint_initialises_the_segmenter_but_another_size_does_not(tmp_path):
    classifier, wider, segmenter = nano_models()
    ClusterFormerCheckpointer(classifier, str(tmp_path)).save("classifier")
    ClusterFormerCheckpointer(wider, str(tmp_path)).save("wider")

    ClusterFormerCheckpointer(segmenter).load(str(tmp_path / "classifier.pth"))
    for name, parameter in classifier.backbone.named_parameters():
        assert torch.equal(segmenter.backbone.state_dict()[name], parameter), name

    with pytest.raises(CheckpointMismatchError, match=r"wider\.pth.*backbone\.\S+: \(48,"):
        ClusterFormerCheckpointer(segmenter).load(str(tmp_path / "wider.pth"))


def test_eval_only_with_weights_of_another_size_fails_naming_keys(tmp_path):
    _, wider, _ = nano_models()
    ClusterFormerCheckpointer(wider, str(tmp_path)).save("wider")
    proc = run_train_net(
        "--config-file",
        CLS_CONFIG,
        "--eval-only",
        "OUTPUT_DIR",
        str(tmp_path / "eval"),
        "MODEL.WEIGHTS",
        str(tmp_path / "wider.pth"),
        expect_returncode=1,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert "CheckpointMismatchError" in proc.stderr
    assert "backbone.stem" in proc.stderr or "backbone." in proc.stderr
