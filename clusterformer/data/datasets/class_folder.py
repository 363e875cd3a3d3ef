"""Image classification data sets stored as one sub-folder of images per class.

This is the layout of ImageNet (``train/<wnid>/*.JPEG``) and of torchvision's ``ImageFolder``.
:func:`load_class_folder` needs neither detectron2 nor image decoding; :func:`register_class_folder`
registers such a folder in Detectron2's catalogs with ``evaluator_type="classification"``.
"""

import os
from typing import Any, Callable, List, Optional, Sequence

from .path_safety import check_plain_name

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)


def _is_image(file_name: str) -> bool:
    return file_name.lower().endswith(IMAGE_EXTENSIONS)


def _class_subfolders(root: str) -> List[str]:
    """The sorted names of the sub-folders of ``root`` that are not hidden."""
    return sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _images_under(folder: str) -> List[str]:
    """Image files anywhere under ``folder``, sorted, skipping hidden files and folders."""
    found = []
    for directory, subdirectories, files in os.walk(folder, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        found.extend(
            os.path.join(directory, f)
            for f in sorted(files)
            if not f.startswith(".") and _is_image(f)
        )
    return found


def load_class_folder(root: str, class_names: Optional[Sequence[str]] = None) -> List[dict]:
    """Load a class-folder data set as Detectron2-style dicts.

    Args:
        root: folder with one sub-folder per class (images may sit in nested folders below it).
            Files directly in ``root`` and hidden entries are ignored.
        class_names: the classes, in label order. Default: the sorted sub-folder names. A class
            without a sub-folder simply has no images.

    Returns:
        ``[{"file_name": str, "image_id": int, "label": int}, ...]`` in class order, then
        sorted path order; ``label`` indexes ``class_names``, ``image_id`` counts from 0.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: a sub-folder is not in ``class_names``, ``class_names`` repeats a name, or
            ``root`` holds no images; ``UnsafePathError`` (a ``ValueError``): a class name is not
            a plain folder name (``..``, a path separator), which would read outside ``root``.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"class-folder data set: no folder {root!r}")
    folders = _class_subfolders(root)
    if class_names is None:
        class_names = folders
    class_names = list(class_names)
    for class_name in class_names:
        check_plain_name(class_name, source=f"class-folder data set {root!r}", what="class name")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class-folder data set {root!r}: class_names has duplicates")
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise ValueError(
            f"class-folder data set {root!r}: sub-folder(s) {unknown[:5]} are not among the "
            f"{len(class_names)} class names"
        )
    dataset_dicts = []
    for label, class_name in enumerate(class_names):
        folder = os.path.join(root, class_name)
        if not os.path.isdir(folder):
            continue
        for file_name in _images_under(folder):
            dataset_dicts.append(
                {"file_name": file_name, "image_id": len(dataset_dicts), "label": label}
            )
    if not dataset_dicts:
        raise ValueError(
            f"class-folder data set {root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) "
            "in its class sub-folders"
        )
    return dataset_dicts


def register_class_folder(
    name: str,
    root: str,
    class_names: Optional[Sequence[str]] = None,
    *,
    before_load: Optional[Callable[[], Any]] = None,
    **metadata: Any,
) -> None:
    """Register a class-folder data set as ``name`` (lazily: the folder is read on first use,
    after ``before_load()`` when given, e.g. the generation of the folder).

    The metadata gets ``classes`` (when ``class_names`` is given; otherwise the loader sets it
    from the sub-folder names on first use), ``image_root=root``,
    ``evaluator_type="classification"`` and ``metadata``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    def load() -> List[dict]:
        if before_load is not None:
            before_load()
        dataset_dicts = load_class_folder(root, class_names)
        meta = MetadataCatalog.get(name)
        if class_names is None and not hasattr(meta, "classes"):
            # Same rule as load_class_folder: the sorted sub-folder names.
            meta.classes = _class_subfolders(root)
        return dataset_dicts

    DatasetCatalog.register(name, load)
    if class_names is not None:
        metadata["classes"] = list(class_names)
    MetadataCatalog.get(name).set(image_root=root, evaluator_type="classification", **metadata)
