"""tools/extract_backbone.py: a trained model's backbone as a weights file other models load."""

import pytest
import torch

from clusterformer.modeling.backbone.clusterformer import clusterformer_nano
from tools import extract_backbone


@pytest.fixture
def classifier_checkpoint(tmp_path):
    backbone = clusterformer_nano(out_features=["res5"])
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["head.fc.weight"] = torch.randn(4, 256)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "optimizer": {"state": {}}, "iteration": 3999}, path)
    return path, backbone


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_keeps_the_backbone_only_and_loads_back(classifier_checkpoint, tmp_path, dtype):
    source, backbone = classifier_checkpoint
    output = tmp_path / "weights" / "backbone.pth"
    assert extract_backbone.main([str(source), str(output), "--dtype", dtype]) == 0

    saved = torch.load(output, weights_only=True)
    assert set(saved) == {"model", "__meta__"}
    assert saved["__meta__"]["source_iteration"] == 3999
    assert saved["__meta__"]["dtype"] == dtype
    assert all(k.startswith("backbone.") for k in saved["model"])
    expected = backbone.state_dict()
    assert len(saved["model"]) == len(expected)

    # A segmentation model's backbone (all four outputs) takes every tensor, cast to float32.
    fresh = clusterformer_nano()
    missing, unexpected = fresh.load_state_dict(
        {k[len("backbone.") :]: v for k, v in saved["model"].items()}, strict=False
    )
    assert unexpected == [] and all(k.startswith("output_norms.res") for k in missing)
    tolerance = 0 if dtype == "float32" else 1e-3
    for name, value in fresh.state_dict().items():
        if name in expected:
            assert value.dtype == torch.float32
            torch.testing.assert_close(value, expected[name], atol=tolerance, rtol=tolerance)


def test_a_checkpoint_without_a_backbone_is_refused(tmp_path):
    source = tmp_path / "head_only.pth"
    torch.save({"model": {"head.fc.weight": torch.zeros(2, 2)}}, source)
    with pytest.raises(ValueError, match=r"head_only\.pth has no 'backbone\.\*' tensors"):
        extract_backbone.main([str(source), str(tmp_path / "out.pth")])


def test_all_keeps_every_model_tensor_and_prefers_the_averaged_weights(tmp_path):
    trained = {"backbone.w": torch.ones(2), "head.fc.weight": torch.full((2, 2), 3.0)}
    averaged = {"module.backbone.w": torch.zeros(2), "module.head.fc.weight": torch.ones(2, 2)}
    averaged["n_averaged"] = torch.tensor(5)
    plain, with_ema = tmp_path / "plain.pth", tmp_path / "ema.pth"
    torch.save({"model": trained, "optimizer": {}}, plain)
    torch.save({"model": trained, "model_ema": averaged, "optimizer": {}}, with_ema)
    tool = extract_backbone

    assert tool.main(["--all", str(plain), str(tmp_path / "out.pth")]) == 0
    saved = torch.load(tmp_path / "out.pth", weights_only=True)
    assert saved["__meta__"]["kept"] == "model"
    assert set(saved["model"]) == set(trained)
    torch.testing.assert_close(saved["model"]["head.fc.weight"], trained["head.fc.weight"])

    assert (
        tool.main(["--all", "--dtype", "float16", str(with_ema), str(tmp_path / "ema_out.pth")])
        == 0
    )
    saved = torch.load(tmp_path / "ema_out.pth", weights_only=True)["model"]
    assert set(saved) == set(trained)
    assert saved["head.fc.weight"].dtype == torch.float16
    torch.testing.assert_close(saved["head.fc.weight"].float(), torch.ones(2, 2))
