"""The Detectron2 layer: config keys, registrations, meta-architectures and the predictor.

Importing it registers this project with Detectron2, as ``import mask2former`` does:
``D2ClusterFormer`` in ``BACKBONE_REGISTRY`` (:mod:`.backbone`), ``ClusterFormer`` and
``ClusterFormerClassifier`` in ``META_ARCH_REGISTRY`` (:mod:`.meta_arch`), and the data sets
(:func:`~clusterformer.data.datasets.register_all_datasets`). Detectron2's own data sets are left
as they are; :func:`use_checked_builtin_loaders` gives its COCO instance and ADE20K semantic names
checking loaders when asked (train_net.py and the demo ask). When Mask2Former is used in the same
process, import it first: this project then keeps its registration of the names both register.
"""

from ..utils.opencv import import_cv2

# Detectron2's data and drawing modules import cv2: say which packages provide it first.
import_cv2()

from ..data.datasets import register_all_datasets, use_checked_builtin_loaders  # noqa: E402
from . import meta_arch  # noqa: E402, F401  (registers backbones and meta-architectures)
from .config import add_clusterformer_config  # noqa: E402
from .config_files import load_config  # noqa: E402
from .predictor import ClusterFormerPredictor  # noqa: E402

register_all_datasets()

__all__ = [
    "ClusterFormerPredictor",
    "add_clusterformer_config",
    "load_config",
    "register_all_datasets",
    "use_checked_builtin_loaders",
]
