"""Config -> core modules of the ``ClusterFormer`` meta-architecture (Detectron2 layer).

``MODEL.SEM_SEG_HEAD`` builds the pixel decoder, ``MODEL.CLUSTER_DECODER`` the clustering decoder,
the matcher and the losses. ``MASK_ON`` / ``BOX_ON`` choose the heads, and only what a mode uses
is built, so that every parameter receives a gradient (DDP with ``find_unused_parameters=False``):

| mode | MASK_ON | BOX_ON | heads | pixel decoder | losses |
|---|---|---|---|---|---|
| segmentation | True | False | class, mask | FPN + mask features | labels, masks |
| instance segmentation with boxes | True | True | class, mask, box | FPN + mask features | labels, masks, boxes |
| detection | False | True | class, box | encoder levels only | labels, boxes |

:func:`validate_config` checks the task switches once, where the config enters
(``ClusterFormer.from_config``); the builders below and the modules they build trust it.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.modeling import Backbone

from ...modeling.criterion import CLASS_LOSS_CHOICES, SetCriterion
from ...modeling.matcher import HungarianMatcher
from ...modeling.pixel_decoder import MSDeformAttnPixelDecoder
from ...modeling.transformer_decoder import ClusteringTransformerDecoder

# Class-bias prior of focal-loss detectors (RetinaNet, Deformable DETR, DINO).
FOCAL_CLASS_PRIOR_PROB = 0.01


def validate_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` on a combination of heads (``MASK_ON`` / ``BOX_ON``), outputs
    (``TEST.*_ON``) and class loss the ``ClusterFormer`` model cannot honour. The one check of
    these keys: ``ClusterFormer.from_config`` runs it before building anything."""
    d = cfg.MODEL.CLUSTER_DECODER
    test = d.TEST
    if not (d.MASK_ON or d.BOX_ON):
        raise ValueError(
            "MODEL.CLUSTER_DECODER: MASK_ON and BOX_ON are both False; the model must predict "
            "masks, boxes or both"
        )
    if d.CLASS_LOSS not in CLASS_LOSS_CHOICES:
        raise ValueError(
            f"MODEL.CLUSTER_DECODER.CLASS_LOSS={d.CLASS_LOSS!r}; expected one of "
            f"{CLASS_LOSS_CHOICES}"
        )
    if not d.MASK_ON:
        need_masks = [k for k in ("SEMANTIC_ON", "PANOPTIC_ON", "INSTANCE_ON") if test.get(k)]
        if need_masks:
            raise ValueError(
                f"MODEL.CLUSTER_DECODER.MASK_ON=False (detection), but TEST.{', TEST.'.join(need_masks)} "
                "need masks; turn them off and use TEST.DETECTION_ON for box detections"
            )
    if test.DETECTION_ON and not d.BOX_ON:
        raise ValueError(
            "MODEL.CLUSTER_DECODER.TEST.DETECTION_ON=True needs BOX_ON=True (boxes predicted by "
            "the box head); instance segmentation reports boxes from masks with INSTANCE_ON"
        )
    if d.CLASS_LOSS == "sigmoid_focal" and (test.SEMANTIC_ON or test.PANOPTIC_ON):
        raise ValueError(
            "MODEL.CLUSTER_DECODER.CLASS_LOSS='sigmoid_focal' trains no 'no object' class, which "
            "semantic and panoptic inference rely on; use 'softmax_ce' or turn off "
            "TEST.SEMANTIC_ON / TEST.PANOPTIC_ON"
        )


def build_pixel_decoder(cfg: CfgNode, backbone: Backbone) -> MSDeformAttnPixelDecoder:
    """``MODEL.SEM_SEG_HEAD`` -> the deformable-attention pixel decoder on ``backbone``'s outputs
    (without the FPN / mask-feature path when ``MODEL.CLUSTER_DECODER.MASK_ON`` is False)."""
    h = cfg.MODEL.SEM_SEG_HEAD
    mask_on = cfg.MODEL.CLUSTER_DECODER.MASK_ON
    if h.PIXEL_DECODER_NAME != "MSDeformAttnPixelDecoder":
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={h.PIXEL_DECODER_NAME!r}: only "
            "'MSDeformAttnPixelDecoder' is implemented"
        )
    shapes = backbone.output_shape()
    missing = [f for f in h.IN_FEATURES if f not in shapes]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES asks for {missing}, but the backbone only outputs "
            f"{sorted(shapes)} (check MODEL.CLUSTERFORMER_BACKBONE.OUT_FEATURES)"
        )
    encoder_features = list(h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)
    if not mask_on:
        unread = sorted(set(shapes) - set(encoder_features))
        if unread:
            raise ValueError(
                "MODEL.CLUSTER_DECODER.MASK_ON=False (detection) reads only the encoder levels "
                f"{encoder_features}, but the backbone also outputs {unread}, whose parameters "
                "would get no gradient (DDP fails); set MODEL.CLUSTERFORMER_BACKBONE.OUT_FEATURES and "
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES to {encoder_features}"
            )
    return MSDeformAttnPixelDecoder(
        {f: shapes[f].channels for f in h.IN_FEATURES},
        {f: shapes[f].stride for f in h.IN_FEATURES},
        in_features=list(h.IN_FEATURES),
        transformer_in_features=encoder_features,
        conv_dim=h.CONVS_DIM,
        mask_dim=h.MASK_DIM,
        norm=h.NORM,
        common_stride=h.COMMON_STRIDE,
        num_layers=h.TRANSFORMER_ENC_LAYERS,
        n_heads=h.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
        n_points=h.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
        dim_feedforward=h.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
        dropout=h.DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT,
        mask_features_on=mask_on,
    )


def build_transformer_decoder(cfg: CfgNode) -> ClusteringTransformerDecoder:
    """``MODEL.CLUSTER_DECODER`` -> the clustering (or masked-attention) transformer decoder."""
    h, d = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.CLUSTER_DECODER
    return ClusteringTransformerDecoder(
        in_channels=h.CONVS_DIM,
        num_classes=h.NUM_CLASSES,
        hidden_dim=d.HIDDEN_DIM,
        num_queries=d.NUM_OBJECT_QUERIES,
        nheads=d.NHEADS,
        dim_feedforward=d.DIM_FEEDFORWARD,
        dec_layers=d.DEC_LAYERS,
        pre_norm=d.PRE_NORM,
        mask_dim=h.MASK_DIM,
        enforce_input_project=d.ENFORCE_INPUT_PROJ,
        cross_attention=d.CROSS_ATTENTION,
        cross_attention_init=d.CROSS_ATTENTION_INIT,
        clustering_iterations=d.CLUSTERING_ITERATIONS,
        dropout=d.DROPOUT,
        num_feature_levels=len(h.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
        mask_threshold=d.ASSIGNMENT_MASK_THRESHOLD,
        restrict_to_masks=d.RESTRICT_TO_MASKS,
        mask_on=d.MASK_ON,
        box_on=d.BOX_ON,
        restrict_to_boxes=d.BOX_RESTRICTED_ASSIGNMENT,
        box_refinement_gradient=d.BOX_REFINEMENT_GRADIENT,
        # The anchors learn only from the first predictions' losses (deep supervision).
        learn_anchor_boxes=d.DEEP_SUPERVISION,
        class_prior_prob=FOCAL_CLASS_PRIOR_PROB if d.CLASS_LOSS == "sigmoid_focal" else None,
        semantic_head=d.MASK_ON and d.SEMANTIC_WEIGHT > 0,
        mask_shape_resolution=d.MASK_SHAPE_RESOLUTION if d.MASK_ON else 0,
    )


def build_criterion(cfg: CfgNode) -> SetCriterion:
    """Matcher costs and loss weights from ``MODEL.CLUSTER_DECODER`` (the same numbers): class
    (softmax CE or sigmoid focal), mask BCE + Dice when ``MASK_ON``, box L1 + GIoU when
    ``BOX_ON``. ``cfg`` has passed :func:`validate_config`."""
    d = cfg.MODEL.CLUSTER_DECODER
    focal = d.CLASS_LOSS == "sigmoid_focal"
    matcher = HungarianMatcher(
        cost_class=d.CLASS_WEIGHT,
        cost_mask=d.MASK_WEIGHT if d.MASK_ON else 0.0,
        cost_dice=d.DICE_WEIGHT if d.MASK_ON else 0.0,
        num_points=d.TRAIN_NUM_POINTS,
        cost_bbox=d.BOX_L1_WEIGHT if d.BOX_ON else 0.0,
        cost_giou=d.GIOU_WEIGHT if d.BOX_ON else 0.0,
        class_cost_type="focal" if focal else "softmax",
        focal_alpha=d.FOCAL_ALPHA,
        focal_gamma=d.FOCAL_GAMMA,
    )
    losses = ("labels",) + (("masks",) if d.MASK_ON else ()) + (("boxes",) if d.BOX_ON else ())
    if d.MASK_ON:
        losses += (("mask_id",) if d.MASK_ID_WEIGHT > 0 else ()) + (
            ("semantic",) if d.SEMANTIC_WEIGHT > 0 else ()
        )
    return SetCriterion(
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        matcher,
        eos_coef=d.NO_OBJECT_WEIGHT,
        class_weight=d.CLASS_WEIGHT,
        mask_weight=d.MASK_WEIGHT,
        dice_weight=d.DICE_WEIGHT,
        box_l1_weight=d.BOX_L1_WEIGHT,
        giou_weight=d.GIOU_WEIGHT,
        mask_id_weight=d.MASK_ID_WEIGHT,
        semantic_weight=d.SEMANTIC_WEIGHT,
        losses=losses,
        num_points=d.TRAIN_NUM_POINTS,
        oversample_ratio=d.OVERSAMPLE_RATIO,
        importance_sample_ratio=d.IMPORTANCE_SAMPLE_RATIO,
        deep_supervision=d.DEEP_SUPERVISION,
        class_loss=d.CLASS_LOSS,
        focal_alpha=d.FOCAL_ALPHA,
        focal_gamma=d.FOCAL_GAMMA,
    )
