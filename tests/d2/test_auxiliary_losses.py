"""MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT / MASK_ID_WEIGHT: the config builds the semantic head and
the two kMaX-DeepLab losses only when their weight is positive, with that weight."""

from __future__ import annotations

import pytest

from clusterformer.d2.config_files import load_config
from clusterformer.d2.meta_arch.builders import build_criterion, build_transformer_decoder

CONFIG = "configs/shapes/panoptic-segmentation/clusterformer_nano.yaml"


@pytest.mark.parametrize("semantic, mask_id", [(0.0, 0.0), (2.0, 0.0), (0.0, 0.5), (1.0, 1.0)])
def test_auxiliary_losses_follow_their_weights(semantic, mask_id):
    cfg = load_config(
        CONFIG,
        [
            "MODEL.CLUSTER_DECODER.SEMANTIC_WEIGHT",
            str(semantic),
            "MODEL.CLUSTER_DECODER.MASK_ID_WEIGHT",
            str(mask_id),
        ],
    )
    criterion = build_criterion(cfg)
    decoder = build_transformer_decoder(cfg)
    assert ("semantic" in criterion.losses) == (semantic > 0)
    assert ("mask_id" in criterion.losses) == (mask_id > 0)
    assert (decoder.semantic_head is not None) == (semantic > 0)
    if semantic > 0:
        assert decoder.semantic_head.out_channels == cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert criterion.weight_dict["loss_sem_seg"] == semantic
    assert criterion.weight_dict["loss_mask_id"] == mask_id
