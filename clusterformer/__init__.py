"""ClusterFormer: clustering as a universal visual learner, as a Detectron2 project.

Importing this package has no side effects: it imports neither detectron2 nor OpenCV and
registers nothing. The model core (``clusterformer.modeling``: backbone, ops, pixel decoder,
decoders, matcher, criterion, post-processing) is plain PyTorch. The Detectron2 layer is
``clusterformer.d2``: importing it registers the ``D2ClusterFormer`` backbone, the
meta-architectures and the data sets, as ``import mask2former`` does.
:func:`add_clusterformer_config`, :class:`ClusterFormerPredictor` and :func:`load_config` are
also reachable here; the first access imports ``clusterformer.d2``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# Names of clusterformer.d2 that ``from clusterformer import ...`` gives too.
_D2_EXPORTS = ("ClusterFormerPredictor", "add_clusterformer_config", "load_config")


def detectron2_available() -> bool:
    """True when detectron2 can be imported (and with it the Detectron2 layer ``clusterformer.d2``)."""
    return importlib.util.find_spec("detectron2") is not None


def __getattr__(name: str) -> Any:
    """:data:`_D2_EXPORTS` from ``clusterformer.d2``, imported (and so registered) on first access."""
    if name not in _D2_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not detectron2_available():
        raise ImportError(
            f"clusterformer.{name} belongs to the Detectron2 layer (clusterformer.d2), which needs "
            "detectron2, and detectron2 is not installed (see docs/install.md). The model core, "
            "clusterformer.modeling, works without it."
        )
    d2 = importlib.import_module(f"{__name__}.d2")
    return getattr(d2, name)


__all__ = ["ClusterFormerPredictor", "__version__", "add_clusterformer_config", "load_config"]
