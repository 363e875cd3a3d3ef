"""ClusterFormer: clustering as a universal visual learner, as a Detectron2 project.

The model core (``clusterformer.modeling``: backbone, ops, pixel decoder, decoders, matcher,
criterion, post-processing) is plain PyTorch and imports without detectron2. When detectron2 is
installed, importing this package also registers the Detectron2 layer, as Mask2Former does (the
``D2ClusterFormer`` backbone, the meta-architectures, the data sets) and exposes
:func:`add_clusterformer_config` and :class:`ClusterFormerPredictor`.
"""

import importlib.util

__version__ = "0.1.0"


def detectron2_available() -> bool:
    """True when detectron2 can be imported (the Detectron2 layer is then registered)."""
    return importlib.util.find_spec("detectron2") is not None


if detectron2_available():
    # Detectron2's data and drawing modules import cv2: say which packages provide it first.
    from .utils.opencv import import_cv2

    import_cv2()
    from . import data  # noqa: F401  (registers the data sets)
    from .config import add_clusterformer_config  # noqa: F401
    from .modeling import meta_arch  # noqa: F401  (registers backbones and meta-architectures)
    from .predictor import ClusterFormerPredictor  # noqa: F401
