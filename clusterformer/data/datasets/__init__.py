"""Data set registration (DatasetCatalog / MetadataCatalog) and the data set generators.

Importing this package registers nothing and imports no detectron2: the generators and format
helpers (``shapes``, ``mask_encoding``, ``class_folder``'s loader) work without it.
:func:`register_all_datasets` registers this project's data sets (``import clusterformer.d2``
calls it); :func:`use_checked_builtin_loaders` replaces the loaders of some of Detectron2's own
data sets, only for the entry points that ask (train_net.py, the demo).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# The registration functions and the PanopticFiles they take, re-exported here and imported (with
# detectron2) on first access.
_LAZY_EXPORTS = {
    "PanopticFiles": "register_formats",
    "register_ade20k_panoptic": "register_ade20k_panoptic",
    "register_ade20k_semantic": "register_ade20k_semantic",
    "register_coco_panoptic_with_sem_seg": "register_coco_panoptic_semseg",
}

_registered = False


def register_all_datasets() -> None:
    """Register this project's data sets under ``$DETECTRON2_DATASETS`` (nothing is read now).

    ``shapes*_{panoptic,instance,sem_seg,cls}_{train,val}``, ``imagenet_*``, ``digits_*``,
    ``coco_2017_{train,val}_panoptic_with_sem_seg`` and ``ade20k_panoptic_{train,val}``; the last
    two are Mask2Former's names too, and a name already registered (by Mask2Former, imported
    first) is kept with a log line. Detectron2's own names are left as they are. Runs once per
    process; later calls do nothing.
    """
    global _registered
    if _registered:
        return
    from .dataset_paths import datasets_root
    from .register_ade20k_panoptic import register_all_ade20k_panoptic
    from .register_classification import register_digits, register_imagenet
    from .register_coco_panoptic_semseg import register_all_coco_panoptic_with_sem_seg
    from .register_shapes import register_all_shapes

    register_all_shapes()
    register_imagenet()
    register_digits()
    register_all_coco_panoptic_with_sem_seg(datasets_root())
    register_all_ade20k_panoptic(datasets_root())
    _registered = True


def use_checked_builtin_loaders() -> None:
    """Give Detectron2's builtin ``coco_{2014,2017}_*`` instance splits and
    ``ade20k_sem_seg_{train,val}`` loaders that check their files first.

    The COCO splits keep their metadata and get
    :func:`~.register_formats.load_coco_instances_checked` (a missing JSON or image folder is
    named, records leading outside the image folder are refused); the ADE20K names are registered
    again with the same files, a folder check and ``stuff_colors``. This replaces Detectron2's
    registrations for the whole process, so it is never done on import: train_net.py and the demo
    call it. Calling it again changes nothing more.
    """
    from .register_ade20k_semantic import use_checked_ade20k_semantic_loaders
    from .register_coco_instances import use_checked_coco_loaders

    use_checked_coco_loaders()
    use_checked_ade20k_semantic_loaders()


class _DatasetsPackage(types.ModuleType):
    """This package, whose attributes ``register_ade20k_panoptic`` / ``register_ade20k_semantic``
    stay the functions when their modules of the same name are imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system sets the package attribute of a submodule's name to the submodule.
        if name in _LAZY_EXPORTS and getattr(value, "__name__", None) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _DatasetsPackage


def __getattr__(name: str) -> Any:
    """The registration functions of :data:`_LAZY_EXPORTS`, imported on first access."""
    if name in _LAZY_EXPORTS:
        module = importlib.import_module(f"{__name__}.{_LAZY_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PanopticFiles",
    "register_ade20k_panoptic",
    "register_ade20k_semantic",
    "register_all_datasets",
    "register_coco_panoptic_with_sem_seg",
    "use_checked_builtin_loaders",
]
