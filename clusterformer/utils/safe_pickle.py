"""Reading Detectron2 ``.pkl`` weight files without running pickled code (no detectron2 import).

Detectron2's ``.pkl`` checkpoints (``{"model": {name: ndarray}, "__author__": ...}`` or the Caffe2
``blobs`` layout) are plain pickles of numpy arrays. :class:`NumpyOnlyUnpickler` rebuilds those and
refuses every other global, so a weights file cannot run code when it is opened. The checkpointer
(:mod:`clusterformer.engine.checkpointer`) and the Mask2Former converter
(:mod:`clusterformer.modeling.mask2former_conversion`) both read ``.pkl`` files through it.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["NumpyOnlyUnpickler", "UnsafeCheckpointError", "load_numpy_pickle"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs arbitrary code to be unpickled and pickle loading was not allowed."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers, strings and numpy arrays; refuses every other global.

    The arrays need only these: they are rebuilt from their bytes and dtype (``_reconstruct``,
    ``_frombuffer``, ``scalar``); ``_codecs.encode`` appears in protocol-2 pickles of bytes and
    only encodes a string.
    """

    ALLOWED_GLOBALS = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"the pickle wants to call {module}.{name}, which a weights file does not need"
        )


def load_numpy_pickle(path: str) -> Any:
    """Read a pickle of numpy arrays (latin-1 strings, as Detectron2 reads Python 2 pickles)."""
    with open(path, "rb") as f:
        return NumpyOnlyUnpickler(f, encoding="latin1").load()
