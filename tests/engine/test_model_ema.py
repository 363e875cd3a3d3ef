"""MODEL_EMA: the averaged weights are updated every step, checkpointed beside the trained ones,
restored on resume, and loaded for inference (checkpointer, predictor)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from clusterformer.d2.config_files import load_config
from clusterformer.d2.predictor import load_weights
from clusterformer.engine import ClusterFormerCheckpointer, Trainer
from clusterformer.engine.hooks import ModelEMA
from clusterformer.utils.model_ema import averaged_weights, build_model_ema

CLS_CONFIG = "configs/shapes/classification/clusterformer_nano.yaml"


def test_the_average_follows_the_decay_from_the_first_weights():
    model = nn.Linear(2, 1)
    hook = ModelEMA(build_model_ema(model, decay=0.75))
    hook.trainer = SimpleNamespace(model=model)
    expected = None
    for value in (1.0, 3.0, -2.0):
        with torch.no_grad():
            model.weight.fill_(value)
        hook.after_step()
        expected = value if expected is None else 0.75 * expected + 0.25 * value
        torch.testing.assert_close(hook.ema.module.weight, torch.full((1, 2), expected))
    assert int(hook.ema.n_averaged) == 3


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="MODEL_EMA.DECAY"):
        build_model_ema(nn.Linear(2, 1), decay)


def ema_config(tmp_path, max_iter=3):
    overrides = ["OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()"]
    overrides += ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", "4"]
    overrides += ["SOLVER.WARMUP_ITERS", "1", "MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5"]
    return load_config(CLS_CONFIG, overrides)


def assert_state_equal(model: nn.Module, expected: dict) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ema")
    trainer = Trainer(ema_config(out))
    trainer.resume_or_load(resume=False)
    trainer.train()
    checkpoint = torch.load(out / "model_final.pth", weights_only=True)
    return out, trainer, checkpoint


def test_checkpoints_hold_the_trained_and_the_averaged_weights(trained):
    _, trainer, checkpoint = trained
    average = averaged_weights(checkpoint["model_ema"])
    assert set(average) == set(checkpoint["model"])
    assert int(checkpoint["model_ema"]["n_averaged"]) == 3
    assert any(not torch.equal(average[k], checkpoint["model"][k]) for k in average)
    assert_state_equal(trainer.model_ema.module, average)
    assert_state_equal(trainer.model, checkpoint["model"])


def test_inference_loads_the_average_and_training_resumes_both(trained, tmp_path):
    out, _, checkpoint = trained
    cfg = ema_config(out)
    average = averaged_weights(checkpoint["model_ema"])

    model = Trainer.build_model(cfg)
    ClusterFormerCheckpointer.from_config(cfg, model).load(str(out / "model_final.pth"))
    assert_state_equal(model, average)
    model = Trainer.build_model(cfg)
    load_weights(model, str(out / "model_final.pth"), use_ema_weights=True)
    assert_state_equal(model, average)
    load_weights(model, str(out / "model_final.pth"), use_ema_weights=False)
    assert_state_equal(model, checkpoint["model"])

    resumed = Trainer(ema_config(out, max_iter=4))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert_state_equal(resumed.model, checkpoint["model"])
    assert_state_equal(resumed.model_ema.module, average)
    assert int(resumed.model_ema.n_averaged) == 3


def test_a_checkpoint_without_an_average_loads_its_weights_with_a_warning(
    trained, tmp_path, caplog
):
    out, _, checkpoint = trained
    path = tmp_path / "plain.pth"
    torch.save({"model": checkpoint["model"]}, path)
    model = Trainer.build_model(ema_config(out))
    with caplog.at_level(logging.WARNING):
        ClusterFormerCheckpointer(model, use_ema_weights=True).load(str(path))
    assert "no averaged weights" in caplog.text
    assert_state_equal(model, checkpoint["model"])
