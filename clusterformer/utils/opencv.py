"""OpenCV, whichever of its pip packages the user has (needs no detectron2).

``opencv-python`` (with window / webcam support, ``cv2.imshow``) and ``opencv-python-headless``
(servers) both provide the module ``cv2``. pip cannot express "either of them", and listing one
in ``install_requires`` makes pip install it next to the other, where the two copies overwrite
each other's files (a user's ``cv2.imshow`` then fails). So neither is declared (as Detectron2
does); this check turns a missing OpenCV into an error that names both packages.
"""

from __future__ import annotations

import importlib
from types import ModuleType

OPENCV_MISSING = (
    "ClusterFormer needs OpenCV (the module cv2), which is not installed. Install one of "
    "'opencv-python' (keeps window and webcam display: demo.py without --output, --webcam) or "
    "'opencv-python-headless' (servers without a display), not both; see docs/install.md"
)


def import_cv2() -> ModuleType:
    """The ``cv2`` module; ``ImportError`` naming both OpenCV packages when it is missing."""
    try:
        return importlib.import_module("cv2")
    except ModuleNotFoundError as error:
        if error.name != "cv2":  # OpenCV is there but one of its own imports fails: show that
            raise
        raise ImportError(OPENCV_MISSING) from error
