"""A small pixel decoder + transformer decoder learns to reproduce fixed target masks (CPU)."""

import pytest
import torch

from clusterformer.modeling.criterion import SetCriterion
from clusterformer.modeling.matcher import HungarianMatcher
from clusterformer.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from clusterformer.modeling.postprocessing import semantic_inference
from clusterformer.modeling.transformer_decoder import ClusteringTransformerDecoder

CHANNELS = {"res2": 16, "res3": 16, "res4": 16, "res5": 16}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
SIZE = 64
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: thread start-up dominates, and on a shared machine extra threads thrash.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _targets():
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    masks[0, :, : SIZE // 2] = True  # left half
    masks[1, : SIZE // 2, SIZE // 2 :] = True  # top-right quadrant
    masks[2, SIZE // 2 :, SIZE // 2 :] = True  # bottom-right quadrant
    return [{"labels": torch.tensor([0, 1, 2]), "masks": masks}]


@pytest.mark.parametrize("mode", ["clustering", "masked_attention"])
def test_overfits_fixed_masks(mode):
    torch.manual_seed(0)
    features = {
        k: torch.randn(1, c, SIZE // STRIDES[k], SIZE // STRIDES[k]) for k, c in CHANNELS.items()
    }
    pixel_decoder = MSDeformAttnPixelDecoder(
        CHANNELS,
        STRIDES,
        conv_dim=32,
        mask_dim=32,
        num_layers=1,
        n_heads=4,
        n_points=2,
        dim_feedforward=64,
    )
    decoder = ClusteringTransformerDecoder(
        32,
        NUM_CLASSES,
        hidden_dim=32,
        num_queries=5,
        nheads=4,
        dim_feedforward=64,
        dec_layers=3,
        mask_dim=32,
        cross_attention=mode,
        clustering_iterations=2,
    )
    criterion = SetCriterion(
        NUM_CLASSES, HungarianMatcher(2.0, 5.0, 5.0, num_points=256), num_points=256
    )
    params = list(pixel_decoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    targets = _targets()
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(80):
        mask_features, multi_scale = pixel_decoder(features)
        outputs = decoder(multi_scale, mask_features)
        loss = sum(
            criterion.weight_losses(criterion(outputs, targets, generator=generator)).values()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.25 * sum(history[:5]) / 5, history[::10]

    with torch.no_grad():
        mask_features, multi_scale = pixel_decoder(features)
        outputs = decoder(multi_scale, mask_features)
    logits = torch.nn.functional.interpolate(
        outputs["pred_masks"], size=(SIZE, SIZE), mode="bilinear", align_corners=False
    )
    semantic = semantic_inference(outputs["pred_logits"][0], logits[0]).argmax(0)
    expected = torch.zeros(SIZE, SIZE, dtype=torch.long)
    for label, mask in zip(targets[0]["labels"], targets[0]["masks"]):
        expected[mask] = label
    assert (semantic == expected).float().mean() > 0.95
