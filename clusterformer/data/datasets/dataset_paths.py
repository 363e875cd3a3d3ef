"""Where the real data sets live, and the check that turns a missing folder into a clear error."""

from __future__ import annotations

import os
from typing import Dict, Optional

from ..image_io import path_manager


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), as Detectron2's builtin data sets use it."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_paths(
    dataset_name: str, paths: Dict[str, str], how_to_make: Optional[str] = None
) -> None:
    """Raise ``FileNotFoundError`` for the first of ``paths`` ({description: path}) that is missing.

    Called when a data set is used (``DatasetCatalog.get``), never at import, so that registering
    data sets that are not on this machine costs nothing.
    """
    for description, path in paths.items():
        if not path_manager().exists(path):
            hint = f" {how_to_make}." if how_to_make else ""
            raise FileNotFoundError(
                f"Data set {dataset_name!r}: the {description} {path!r} does not exist "
                f"(data sets are looked up under $DETECTRON2_DATASETS, now {datasets_root()!r}).{hint} "
                "See datasets/README.md for the expected layout."
            )
