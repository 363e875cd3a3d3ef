"""Config keys of ClusterFormer, added to a Detectron2 ``CfgNode`` by :func:`add_clusterformer_config`.

Naming follows Mask2Former where the concept is the same (``MODEL.SEM_SEG_HEAD`` for the pixel
decoder, ``INPUT.DATASET_MAPPER_NAME``, ``SOLVER.BACKBONE_MULTIPLIER``) so its users find their way.
ClusterFormer-specific parts live in ``MODEL.CLUSTERFORMER_BACKBONE`` (the backbone, as
``MODEL.SWIN`` is Swin's) and ``MODEL.CLUSTER_DECODER`` (the clustering transformer decoder,
matcher, losses and inference switches; Mask2Former's ``MODEL.MASK_FORMER``). Every ambiguous
choice of the paper is a key here; docs/design_choices.md gives the default and the measurement
that chose it. One spelling throughout: "centre"; one key name for T, ``CLUSTERING_ITERATIONS``
(backbone and decoder).

Keys renamed since earlier versions are in :data:`RENAMED_KEYS`; config files and command-line
overrides that use the old names still load, with a warning
(:func:`clusterformer.d2.config_files.load_config`, docs/migration.md).
"""

from typing import Any, Dict

from detectron2.config import CfgNode as CN

# The backbone's keys whose own name is unchanged (only their node, MODEL.CLUSTERFORMER, was
# renamed).
_BACKBONE_KEYS = (
    "EMBED_DIMS",
    "DEPTHS",
    "MLP_RATIOS",
    "HEAD_DIM",
    "WINDOW_SIZE",
    "TEMPERATURE",
    "MSTEP_NORMALIZATION",
    "ASSIGNMENT_SOFTMAX",
    "DISPATCH",
    "MIXER",
    "LAYER_SCALE_INIT",
    "DROP_PATH_RATE",
    "OUT_FEATURES",
    "DOWNSAMPLE_KERNEL_SIZE",
)

# Old config key -> its current name (same value). Merging a config file or command-line
# overrides moves an old key's value to the new key with a warning; both given is an error.
RENAMED_KEYS: Dict[str, str] = {
    **{f"MODEL.CLUSTERFORMER.{k}": f"MODEL.CLUSTERFORMER_BACKBONE.{k}" for k in _BACKBONE_KEYS},
    "MODEL.CLUSTERFORMER.CENTERS_PER_WINDOW": "MODEL.CLUSTERFORMER_BACKBONE.CENTRES_PER_WINDOW",
    "MODEL.CLUSTERFORMER.ITERATIONS": "MODEL.CLUSTERFORMER_BACKBONE.CLUSTERING_ITERATIONS",
}


def _add_defaults(node: CN, defaults: Dict[str, Any]) -> None:
    """Add each key of ``defaults`` with its default value to ``node``, a node Detectron2's
    ``get_cfg()`` has already (``setattr``, so that yacs checks each value's type)."""
    for key, value in defaults.items():
        setattr(node, key, value)


def add_backbone_config(cfg: CN) -> None:
    """``MODEL.CLUSTERFORMER_BACKBONE``: the image-level clustering backbone (docs/method.md §1).
    Defaults = tiny."""
    cfg.MODEL.CLUSTERFORMER_BACKBONE = CN(
        {
            "EMBED_DIMS": [96, 192, 384, 768],
            "DEPTHS": [2, 2, 6, 2],
            "MLP_RATIOS": [8.0, 8.0, 4.0, 4.0],
            "HEAD_DIM": 32,
            "WINDOW_SIZE": 7,
            # Centres per window are initialised by adaptive average pooling to a k x k grid (k = 2:
            # 4 centres per 7x7 window; the paper's 10x10 exceeds the 49 tokens). Default to be
            # measured.
            "CENTRES_PER_WINDOW": 2,
            # T, the recurrent clustering iterations (shared weights); the decoder's T has the
            # same name.
            "CLUSTERING_ITERATIONS": 3,
            # E-step logit scale: "none" (first code upload) or "inv_sqrt_dim" (1/sqrt(head dim)).
            "TEMPERATURE": "none",
            # M-step: "mean" (divide by the assignment mass of each centre) or "sum" (first code
            # upload).
            "MSTEP_NORMALIZATION": "mean",
            # E-step softmax axis: "clusters" (the paper) or "tokens" (ordinary cross-attention,
            # ablation).
            "ASSIGNMENT_SOFTMAX": "clusters",
            # Feature dispatching: "soft" (paper Eq. 6) or "hard" (released code, argmax centre).
            "DISPATCH": "soft",
            # Token mixer: "clustering" (ClusterFormer) or "window_attention" (the same network
            # with Swin-style window self-attention; a non-clustering baseline for comparisons).
            "MIXER": "clustering",
            "LAYER_SCALE_INIT": 1e-5,
            "DROP_PATH_RATE": 0.1,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
            # Kernel of the stride-2 convs between stages: 3 (docs/method.md, released presets) or
            # 2 (the released base-class default; gives the paper's parameter counts, 28.3M /
            # 49.6M).
            "DOWNSAMPLE_KERNEL_SIZE": 3,
        }
    )


def add_classification_config(cfg: CN) -> None:
    """``MODEL.CLASSIFIER`` and ``INPUT.CLASSIFICATION``: the image-level task (ImageNet recipe)."""
    cfg.MODEL.CLASSIFIER = CN(
        {
            "NUM_CLASSES": 1000,
            # Global pooling of "last_stage" features, or the released code's "all_stages"
            # concatenation.
            "POOLING": "last_stage",
            "LABEL_SMOOTHING": 0.1,
            "MIXUP_ALPHA": 0.0,
            "CUTMIX_ALPHA": 0.0,
            # Probability of applying Mixup/CutMix to a batch; CutMix is chosen with SWITCH_PROB
            # when both on.
            "MIX_PROB": 1.0,
            "MIX_SWITCH_PROB": 0.5,
        }
    )
    cfg.INPUT.CLASSIFICATION = CN(
        {
            "TRAIN_CROP": 224,
            # RandomResizedCrop's area range (Inception-style crops).
            "CROP_SCALE": (0.08, 1.0),
            "TEST_RESIZE": 248,
            "TEST_CROP": 224,
            "RAND_AUGMENT": True,
            "RAND_AUGMENT_MAGNITUDE": 9,
            "RANDOM_ERASING": 0.25,
        }
    )


def add_segmentation_config(cfg: CN) -> None:
    """Pixel decoder (``MODEL.SEM_SEG_HEAD``), clustering decoder, matcher, losses, inference."""
    _add_defaults(
        cfg.MODEL.SEM_SEG_HEAD,
        {
            "MASK_DIM": 256,
            "PIXEL_DECODER_NAME": "MSDeformAttnPixelDecoder",
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
            "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": 8,
            "TRANSFORMER_ENC_LAYERS": 6,
            # Mask2Former hard-codes 1024 / its decoder dropout for the deformable encoder.
            "DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD": 1024,
            "DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT": 0.0,
            "CONVS_DIM": 256,
            "COMMON_STRIDE": 4,
            "NORM": "GN",
        },
    )
    cfg.MODEL.CLUSTER_DECODER = CN(
        {
            "NUM_OBJECT_QUERIES": 100,
            "HIDDEN_DIM": 256,
            "NHEADS": 8,
            "DIM_FEEDFORWARD": 2048,
            # Decoder layers, cycling over the three pixel-decoder scales (9 = 3 rounds).
            "DEC_LAYERS": 9,
            "PRE_NORM": False,
            "DROPOUT": 0.0,
            "ENFORCE_INPUT_PROJ": False,
            # "clustering" (recurrent cross-attention clustering) or "masked_attention"
            # (Mask2Former).
            "CROSS_ATTENTION": "clustering",
            # Initialisation of the cross-attentions' projections: "packed" (Mask2Former's
            # nn.MultiheadAttention: one Xavier draw over the packed query / key / value matrix)
            # or "separate" (one draw per projection, a sqrt(2) larger bound). packed trained the
            # `make run` model to higher PQ_th, mask and box AP on every seed measured
            # (docs/design_choices.md).
            "CROSS_ATTENTION_INIT": "packed",
            # T of the clustering cross-attention (the backbone's T has the same name).
            "CLUSTERING_ITERATIONS": 3,
            # Assignment restriction: pixels whose previous mask probability (resized to the
            # level) is below the threshold are excluded from a query's clustering / attention
            # (Mask2Former: 0.5).
            "RESTRICT_TO_MASKS": True,
            "ASSIGNMENT_MASK_THRESHOLD": 0.5,
            "DEEP_SUPERVISION": True,
            # Loss weights and matching costs (the same numbers, as in Mask2Former).
            "NO_OBJECT_WEIGHT": 0.1,
            "CLASS_WEIGHT": 2.0,
            "MASK_WEIGHT": 5.0,
            "DICE_WEIGHT": 5.0,
            # Auxiliary losses of kMaX-DeepLab's k-means decoder, 0 = off (the paper trains
            # without them; docs/design_choices.md measures them): mask-id cross-entropy (softmax
            # over the queries' mask logits at each pixel, every layer) and a per-pixel semantic
            # cross-entropy on a 1x1 head over the mask features.
            "MASK_ID_WEIGHT": 0.0,
            "SEMANTIC_WEIGHT": 0.0,
            # R > 0: every query's class head also reads its own mask, cropped to the mask's box
            # and resampled to R x R (MaskShapeEmbedding; not in the paper,
            # docs/design_choices.md). 0: off.
            "MASK_SHAPE_RESOLUTION": 0,
            "TRAIN_NUM_POINTS": 12544,
            "OVERSAMPLE_RATIO": 3.0,
            "IMPORTANCE_SAMPLE_RATIO": 0.75,
            "SIZE_DIVISIBILITY": 32,
            "TEST": {
                "SEMANTIC_ON": True,
                "INSTANCE_ON": True,
                "PANOPTIC_ON": True,
                "DETECTION_ON": False,
                "OBJECT_MASK_THRESHOLD": 0.8,
                "OVERLAP_THRESHOLD": 0.8,
                # True: an instance mask keeps only its largest connected region, and its box is
                # that region's (not in Mask2Former or the paper; stray fragments of a query's
                # mask otherwise stretch its box). Measured on shapes in docs/design_choices.md;
                # objects split by occlusion (frequent in COCO) would lose their other parts, so
                # the default stays Mask2Former's.
                "INSTANCE_LARGEST_COMPONENT": False,
            },
        }
    )


def add_detection_config(cfg: CN) -> None:
    """Box-level clustering (docs/method.md §3, docs/detection.md): boxes carried by the queries, box
    losses and costs, and the task switches.

    ``MASK_ON`` / ``BOX_ON`` pick the heads: masks only (pixel level, the segmentation default),
    boxes only (detection: no mask head, no mask features), or both (instance segmentation whose
    instances carry the predicted boxes). ``TEST.DETECTION_ON`` returns box detections
    (``instances`` without masks, needs ``BOX_ON``); ``TEST.INSTANCE_ON`` needs ``MASK_ON``.
    """
    _add_defaults(
        cfg.MODEL.CLUSTER_DECODER,
        {
            "BOX_ON": False,
            # Restrict each query's E-step to the tokens inside its current box (ANDed with the
            # mask restriction when MASK_ON and RESTRICT_TO_MASKS).
            "BOX_RESTRICTED_ASSIGNMENT": True,
            # What the loss of layer l's box reaches through the refinement chain (the reference
            # boxes are detached between layers either way): "look_forward_twice" (DINO: layer
            # l's and l-1's box deltas) or "detach" (Deformable DETR: layer l's only).
            "BOX_REFINEMENT_GRADIENT": "look_forward_twice",
            # Box losses and matching costs (the same numbers, as the class and mask weights).
            "BOX_L1_WEIGHT": 5.0,
            "GIOU_WEIGHT": 2.0,
            # "softmax_ce" (Mask2Former) or "sigmoid_focal" (DETR-family detectors; instance and
            # detection outputs only).
            "CLASS_LOSS": "softmax_ce",
            "FOCAL_ALPHA": 0.25,
            "FOCAL_GAMMA": 2.0,
            "MASK_ON": True,
        },
    )


def add_input_config(cfg: CN) -> None:
    """Data-pipeline keys shared by the mappers (Mask2Former's names)."""
    _add_defaults(
        cfg.INPUT,
        {
            "DATASET_MAPPER_NAME": "coco_panoptic_lsj",
            "SIZE_DIVISIBILITY": -1,
            "COLOR_AUG_SSD": False,
            # Large-scale jitter (COCO).
            "IMAGE_SIZE": 1024,
            "MIN_SCALE": 0.1,
            "MAX_SCALE": 2.0,
            # detr_detection mapper: "detr" (multi-scale resize, random crop half of the time;
            # DINO's COCO recipe) or "lsj" (the large-scale jitter above).
            "DETECTION_AUGMENTATION": "detr",
            # DETR's crop branch: resize the short side to one of these, then crop
            # INPUT.CROP.SIZE (INPUT.CROP.TYPE "absolute_range", SIZE (384, 600) in DETR), then
            # the multi-scale resize.
            "DETR_PRE_CROP_MIN_SIZES": [400, 500, 600],
            "DETR_CROP_PROBABILITY": 0.5,
        },
    )
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0


def add_solver_config(cfg: CN) -> None:
    """Optimiser keys: AdamW with per-parameter groups and full-model gradient clipping."""
    _add_defaults(
        cfg.SOLVER,
        {
            "OPTIMIZER": "ADAMW",
            "BACKBONE_MULTIPLIER": 0.1,
            "WEIGHT_DECAY_EMBED": 0.0,
            "POLY_LR_POWER": 0.9,
            "POLY_LR_CONSTANT_ENDING": 0.0,
        },
    )
    _add_defaults(
        cfg.SOLVER.CLIP_GRADIENTS, {"CLIP_TYPE": "full_model", "CLIP_VALUE": 0.01, "NORM_TYPE": 2.0}
    )
    # An exponential moving average of the weights (d2go's keys): evaluation, checkpoints'
    # inference weights and the predictor use the average (clusterformer/utils/model_ema.py).
    cfg.MODEL_EMA = CN({"ENABLED": False, "DECAY": 0.999})


def add_reliability_config(cfg: CN) -> None:
    """Checkpoint loading policy, broken-sample handling, signals and logging (docs/reliability.md)."""
    # Load checkpoints that need full unpickling (arbitrary code): only for files you trust.
    cfg.MODEL.WEIGHTS_ALLOW_PICKLE = False
    # Regular expressions of checkpoint keys that may differ in shape from the model's (they are
    # then skipped with a warning, e.g. ["^head\\."] to fine-tune a classifier on other classes);
    # any other shape mismatch is an error.
    cfg.MODEL.WEIGHTS_SKIP_MISMATCHED = []
    # Training: replace a sample whose image / annotation file cannot be read (missing,
    # truncated, corrupt, size mismatch) by another one, with a warning, instead of stopping.
    cfg.DATALOADER.SKIP_BROKEN_SAMPLES = False
    # SIGTERM (e.g. a cluster pre-empting the job): finish the current iteration, save a
    # checkpoint, and exit with status 143, so that --resume continues from there.
    cfg.SOLVER.CHECKPOINT_ON_SIGTERM = True
    # How many periodic checkpoints (model_<iteration>.pth) stay in OUTPUT_DIR, the newest ones;
    # model_final.pth and the one last_checkpoint names are always kept. None keeps every one
    # (Detectron2's behaviour: evaluating or averaging earlier checkpoints needs them); a 50-epoch
    # COCO run (368750 iterations, CHECKPOINT_PERIOD 5000) otherwise leaves 73 of them.
    cfg.SOLVER.MAX_TO_KEEP = None
    # Iterations between two writes of metrics.json / the console / TensorBoard; the logged
    # losses are medians over this many iterations (1: every iteration's own values).
    cfg.SOLVER.LOG_PERIOD = 20


def add_clusterformer_config(cfg: CN) -> None:
    """Add every ClusterFormer key (with its default) to ``cfg``, a Detectron2 ``get_cfg()``."""
    add_backbone_config(cfg)
    add_classification_config(cfg)
    add_segmentation_config(cfg)
    add_detection_config(cfg)
    add_input_config(cfg)
    add_solver_config(cfg)
    add_reliability_config(cfg)
