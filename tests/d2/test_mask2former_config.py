"""Config files and overrides written with Mask2Former's key names (clusterformer.d2.config_files)."""

from __future__ import annotations

import logging
import os
import textwrap

import pytest
from train_net_helpers import REPO

import clusterformer.d2.config_files as config_files
from clusterformer.d2.config_files import Mask2FormerConfigError, load_config
from clusterformer.engine import Trainer

BASE = os.path.join(REPO, "configs/shapes/Base-Shapes-PanopticSegmentation.yaml")

# The decoder part of a Mask2Former COCO panoptic config (its MODEL.MASK_FORMER keys, every one
# its configs use), with the shapes model's sizes: the values the base file has under
# MODEL.CLUSTER_DECODER, except OBJECT_MASK_THRESHOLD.
MASK2FORMER_DECODER = """\
MODEL:
  META_ARCHITECTURE: "MaskFormer"
  MASK_FORMER:
    TRANSFORMER_DECODER_NAME: "MultiScaleMaskedTransformerDecoder"
    TRANSFORMER_IN_FEATURE: "multi_scale_pixel_decoder"
    DEEP_SUPERVISION: True
    NO_OBJECT_WEIGHT: 0.1
    CLASS_WEIGHT: 2.0
    MASK_WEIGHT: 5.0
    DICE_WEIGHT: 5.0
    HIDDEN_DIM: 64
    NUM_OBJECT_QUERIES: 20
    NHEADS: 4
    DROPOUT: 0.0
    DIM_FEEDFORWARD: 256
    ENC_LAYERS: 0
    PRE_NORM: False
    ENFORCE_INPUT_PROJ: False
    SIZE_DIVISIBILITY: 32
    DEC_LAYERS: 7  # 6 decoder layers + the prediction on the initial queries
    TRAIN_NUM_POINTS: 1024
    OVERSAMPLE_RATIO: 3.0
    IMPORTANCE_SAMPLE_RATIO: 0.75
    TEST:
      SEMANTIC_ON: True
      INSTANCE_ON: True
      PANOPTIC_ON: True
      OVERLAP_THRESHOLD: 0.8
      OBJECT_MASK_THRESHOLD: 0.5
      SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: False
"""


def write(folder, name: str, text: str, base: str = BASE) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(f"_BASE_: {base}\n" + textwrap.dedent(text))
    return path


@pytest.fixture
def notes():
    messages = []

    class Record(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Record(logging.INFO)
    logger = logging.getLogger(config_files.__name__)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_mask2former_keys_are_translated(tmp_path, notes):
    path = write(tmp_path, "m2f.yaml", MASK2FORMER_DECODER)
    cfg = load_config(path)
    d = cfg.MODEL.CLUSTER_DECODER
    assert cfg.MODEL.META_ARCHITECTURE == "ClusterFormer"
    assert d.CROSS_ATTENTION == "masked_attention"
    assert d.DEC_LAYERS == 6  # Mask2Former's DEC_LAYERS 7
    assert d.NHEADS == 4 and cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS == 4
    assert d.TEST.OBJECT_MASK_THRESHOLD == 0.5  # the derived file overrides the base's 0.1
    assert cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT == 0.0
    assert "MASK_FORMER" not in cfg.MODEL
    text = "\n".join(notes)
    assert (
        "Mask2Former key MODEL.MASK_FORMER.DEC_LAYERS = 7 read as MODEL.CLUSTER_DECODER.DEC_LAYERS = 6"
        in text
    )
    assert "TRANSFORMER_IN_FEATURE = 'multi_scale_pixel_decoder' is what ClusterFormer does" in text
    model = Trainer.build_model(cfg)
    assert model.transformer_decoder.cross_attention_type == "masked_attention"
    assert model.transformer_decoder.num_layers == 6


def test_more_derived_clusterformer_key_wins(tmp_path, notes):
    base = write(tmp_path, "m2f.yaml", "MODEL:\n  MASK_FORMER:\n    NUM_OBJECT_QUERIES: 30\n")
    derived = write(
        tmp_path, "derived.yaml", "MODEL:\n  CLUSTER_DECODER:\n    NUM_OBJECT_QUERIES: 10\n", base
    )
    assert load_config(derived).MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES == 10
    assert any("is overridden by MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES = 10" in m for m in notes)
    # And the other way round: a derived Mask2Former key overrides the base's ClusterFormer one.
    assert load_config(base).MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES == 30


def test_both_names_in_one_file_is_ambiguous(tmp_path):
    path = write(
        tmp_path,
        "both.yaml",
        """\
        MODEL:
          MASK_FORMER:
            NUM_OBJECT_QUERIES: 30
          CLUSTER_DECODER:
            NUM_OBJECT_QUERIES: 10
        """,
    )
    with pytest.raises(Mask2FormerConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "ambiguous" in message and path in message
    assert "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 30" in message
    assert "MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES = 10" in message


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "MODEL:\n  MASK_FORMER:\n    TRANSFORMER_DECODER_NAME: StandardTransformerDecoder\n",
            "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = 'StandardTransformerDecoder'",
        ),
        ("MODEL:\n  MASK_FORMER:\n    DEC_LAYERS: 1\n", "MODEL.MASK_FORMER.DEC_LAYERS = 1"),
        ("MODEL:\n  MASK_FORMER:\n    ENC_LAYERS: 6\n", "MODEL.MASK_FORMER.ENC_LAYERS = 6"),
        ("MODEL:\n  MASK_FORMER:\n    SOMETHING_NEW: 1\n", "MODEL.MASK_FORMER.SOMETHING_NEW"),
        ("MODEL:\n  SWIN:\n    EMBED_DIM: 96\n", "no Swin backbone"),
        (
            "MODEL:\n  MASK_FORMER:\n    TEST:\n      PANOPTIC_ON: False\n      INSTANCE_ON: False\n"
            "      SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE: False\n",
            "resizes the masks to the image before semantic inference",
        ),
    ],
    ids=["decoder-name", "dec-layers", "enc-layers", "unknown", "swin", "postprocessing"],
)
def test_unsupported_keys_name_the_key_and_file(tmp_path, text, expected):
    path = write(tmp_path, "bad.yaml", text)
    derived = write(tmp_path, "derived.yaml", "SOLVER:\n  MAX_ITER: 3\n", path)
    with pytest.raises(Mask2FormerConfigError) as info:
        load_config(derived)
    assert expected in str(info.value)
    assert f"in config file {path!r}" in str(info.value)  # the file of the chain that sets it


def test_command_line_mask2former_keys(notes):
    cfg = load_config(
        BASE,
        [
            "MODEL.MASK_FORMER.DEC_LAYERS",
            "4",
            "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME",
            "MultiScaleMaskedTransformerDecoder",
            "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES",
            "12",
        ],
    )
    d = cfg.MODEL.CLUSTER_DECODER
    assert (d.DEC_LAYERS, d.CROSS_ATTENTION, d.NUM_OBJECT_QUERIES) == (3, "masked_attention", 12)
    assert any(
        m.startswith("Command line: Mask2Former key MODEL.MASK_FORMER.DEC_LAYERS") for m in notes
    )
    with pytest.raises(Mask2FormerConfigError, match="given on the command line"):
        load_config(BASE, ["MODEL.MASK_FORMER.ENC_LAYERS", "6"])


def test_clusterformer_configs_are_unchanged(notes):
    """Files without Mask2Former keys take the usual path (nothing translated, nothing logged)."""
    cfg = load_config(BASE)
    assert cfg.MODEL.CLUSTER_DECODER.DEC_LAYERS == 6
    assert cfg.MODEL.CLUSTER_DECODER.CROSS_ATTENTION == "clustering"
    assert not notes
