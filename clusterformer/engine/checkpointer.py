"""The project's checkpointer: atomic saves, loading without running pickled code, strict shapes.

:class:`ClusterFormerCheckpointer` is Detectron2's ``DetectionCheckpointer`` with three changes
(``train_net.py``, the :class:`~clusterformer.engine.Trainer` and ``--eval-only`` use it):

* **Atomic saves.** A checkpoint is written to a temporary file in the output folder, flushed and
  ``fsync``-ed, then renamed over its final name (``os.replace``); ``last_checkpoint`` is
  rewritten the same way, and only after the checkpoint is complete. A run killed or crashing
  while it writes leaves the previous checkpoint and ``last_checkpoint`` untouched (at worst a
  hidden ``.<name>.tmp-*`` file stays behind), so ``--resume`` always finds a complete file.
* **No pickled code.** ``.pth`` files are read with ``torch.load(..., weights_only=True)``:
  tensors, numbers, strings and containers only, which is all a checkpoint of this project (or
  any ``state_dict``) holds. Detectron2's ``.pkl`` model-zoo format is a plain pickle of numpy
  arrays; it is read with an unpickler that only builds numpy arrays and dtypes and refuses every
  other global. A file that needs more (e.g. a pickled ``argparse.Namespace`` inside) is refused
  with an error; ``MODEL.WEIGHTS_ALLOW_PICKLE True`` loads it anyway, for files you trust.
* **Shape policy** (:meth:`check_compatibility`): loading raises
  :class:`CheckpointMismatchError`, naming the file and the keys, when

  - a key of the checkpoint is in the model with another shape (another architecture, size or
    class count), unless the key matches a regular expression of
    ``MODEL.WEIGHTS_SKIP_MISMATCHED`` (e.g. ``"head\\."`` to fine-tune a classifier on other
    classes), in which case it is skipped with a warning; or
  - no key of the checkpoint is a key of the model (nothing would be loaded).

  Missing keys (in the model, not in the file) and unexpected keys (in the file, not in the
  model) are expected when e.g. an ImageNet classifier initialises a segmentation model: they are
  logged as warnings listing them, as Detectron2 does.
* **Mask2Former checkpoints.** A file with Detectron2 Mask2Former names
  (``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``; ``.pkl`` or ``.pth``) or
  transformers ``Mask2FormerForUniversalSegmentation`` names is recognised and converted
  (:mod:`clusterformer.modeling.mask2former_conversion`) into the pixel decoder and transformer
  decoder; its backbone is skipped with a logged message (the model's backbone keeps its
  initialisation) and so is its loss buffer. The decoders must fit: a decoder weight of the
  model that Mask2Former has but the file lacks, or a converted weight the model has no place
  for, raises :class:`CheckpointMismatchError` with the config values the file needs
  (docs/mask2former_compatibility.md); shapes follow the policy above.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..modeling.mask2former_conversion import (
    DECODER_PREFIX,
    PIXEL_DECODER_PREFIX,
    Mask2FormerConversionError,
    convert_mask2former,
    detect_mask2former_format,
    inferred_config,
    mask2former_counterpart,
)
from ..utils.model_ema import CHECKPOINT_KEY as EMA_CHECKPOINT_KEY
from ..utils.model_ema import averaged_weights
from ..utils.safe_pickle import NumpyOnlyUnpickler, UnsafeCheckpointError, load_numpy_pickle

logger = logging.getLogger(__name__)

# How many keys an error message lists.
MAX_KEYS_LISTED = 20


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model (see the module docstring for the policy)."""


# ---- atomic writes -------------------------------------------------------------------------


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write, mode: str = "wb") -> None:
    """Write ``path`` all-or-nothing: ``write(f)`` fills a temporary file next to it, which is
    flushed, ``fsync``-ed and renamed over ``path``. On any failure (an exception, or the process
    dying) ``path`` keeps its previous content; the temporary file is removed on exceptions."""
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    # os.open with 0o666 applies the umask, so the file gets the permissions of a normal write.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


# ---- loading without executing pickled code ------------------------------------------------


def _pickle_refused(path: str, error: BaseException) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"Refusing to load checkpoint {path!r}: it holds pickled objects beyond tensors and arrays "
        f"({error}), and unpickling them could run arbitrary code. If you trust the file, set "
        "MODEL.WEIGHTS_ALLOW_PICKLE True, or re-save its state_dict with torch.save."
    )


# ---- the checkpointer ----------------------------------------------------------------------


def shape_mismatches(
    checkpoint_state: Dict[str, Any], model_state: Dict[str, Any]
) -> List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]:
    """``(key, shape in checkpoint, shape in model)`` for common keys whose shapes differ."""
    mismatches = []
    for key, value in checkpoint_state.items():
        if key in model_state and hasattr(value, "shape"):
            target = model_state[key]
            if isinstance(target, nn.parameter.UninitializedParameter):
                continue
            if tuple(value.shape) != tuple(target.shape):
                mismatches.append((key, tuple(value.shape), tuple(target.shape)))
    return mismatches


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    more = f", ... ({len(keys) - MAX_KEYS_LISTED} more)" if len(keys) > MAX_KEYS_LISTED else ""
    return shown + more


class ClusterFormerCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer with atomic saves, safe loading and a strict shape policy.

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        allow_pickle: load files that need arbitrary unpickling (``MODEL.WEIGHTS_ALLOW_PICKLE``).
        skip_mismatched: regular expressions; a checkpoint key matching one (``re.search``) may
            differ in shape from the model's and is then skipped with a warning
            (``MODEL.WEIGHTS_SKIP_MISMATCHED``).
        use_ema_weights: load a checkpoint's averaged weights (``"model_ema"``, written by
            training with ``MODEL_EMA.ENABLED``) into the model instead of its ``"model"``
            weights, for inference; a checkpoint without them loads its ``"model"`` with a
            warning.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_pickle: bool = False,
        skip_mismatched: Iterable[str] = (),
        use_ema_weights: bool = False,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_pickle = allow_pickle
        self.skip_mismatched = [re.compile(pattern) for pattern in skip_mismatched]
        self.use_ema_weights = use_ema_weights
        self._loading = ""

    @classmethod
    def from_config(
        cls,
        cfg,
        model: nn.Module,
        save_dir: str = "",
        *,
        use_ema_weights: Optional[bool] = None,
        **checkpointables: Any,
    ):
        """A checkpointer with the ``MODEL.WEIGHTS_*`` policy keys of ``cfg``; it loads averaged
        weights when ``MODEL_EMA.ENABLED`` unless ``use_ema_weights`` says otherwise (training
        resumes the trained weights)."""
        if use_ema_weights is None:
            use_ema_weights = cfg.MODEL_EMA.ENABLED
        return cls(
            model,
            save_dir,
            allow_pickle=cfg.MODEL.WEIGHTS_ALLOW_PICKLE,
            skip_mismatched=cfg.MODEL.WEIGHTS_SKIP_MISMATCHED,
            use_ema_weights=use_ema_weights,
            **checkpointables,
        )

    # -- saving --

    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():  # remote storage: Detectron2's own (non-atomic) writer
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, checkpointable in self.checkpointables.items():
            data[key] = checkpointable.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            mode="w",
        )

    # -- loading --

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path!r} does not exist")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = ""

    def _torch_load(self, f: str) -> Any:
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as error:
            if not self.allow_pickle:
                raise _pickle_refused(f, error) from error
            logger.warning("Loading %s with full unpickling (MODEL.WEIGHTS_ALLOW_PICKLE)", f)
            return torch.load(f, map_location=torch.device("cpu"), weights_only=False)
        except (RuntimeError, EOFError, OSError) as error:
            raise RuntimeError(
                f"Cannot read checkpoint {f!r} (truncated or not a torch checkpoint?): {error}"
            ) from error

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            try:
                data = load_numpy_pickle(filename)
            except UnsafeCheckpointError as error:
                if not self.allow_pickle:
                    raise _pickle_refused(filename, error) from error
                return super()._load_file(filename)
            if not isinstance(data, dict):
                raise CheckpointMismatchError(
                    f"Checkpoint {filename!r} holds a {type(data).__name__}, not a dict of weights"
                )
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo layout
                return data
            if isinstance(data.get("model"), dict) and detect_mask2former_format(data["model"]):
                # A Mask2Former pickle without "__author__": its names are converted exactly,
                # not matched by Caffe2 heuristics.
                return {"model": data["model"], "__author__": "Mask2Former"}
            # Caffe2 / Detectron1 layout, converted by name heuristics as Detectron2 does.
            blobs = data.get("blobs", data)
            weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls: {"model_state": ...}
            data = self._torch_load(filename)
            if "model_state" not in data:
                raise CheckpointMismatchError(
                    f"Cannot load {filename!r}: pycls checkpoints must contain 'model_state'"
                )
            weights = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def check_compatibility(self, checkpoint_state: Dict[str, Any]) -> None:
        """Apply the shape policy (module docstring) to a checkpoint's ``{key: tensor}``."""
        state = {k.removeprefix("module."): v for k, v in checkpoint_state.items()}
        model_state = self.model.state_dict()
        source = self._loading or "the checkpoint"
        if model_state and not set(state) & set(model_state):
            raise CheckpointMismatchError(
                f"Checkpoint {source!r} fits no part of this {type(self.model).__name__}: none of "
                f"its {len(state)} keys is a model key (checkpoint keys: {_listing(sorted(state))}; "
                f"model keys: {_listing(sorted(model_state))}). Is it a checkpoint of another "
                "architecture?"
            )
        mismatches = shape_mismatches(state, model_state)
        # Allowed mismatches are skipped (and logged) by Detectron2's loader.
        refused = [m for m in mismatches if not any(p.search(m[0]) for p in self.skip_mismatched)]
        if refused:
            listed = [f"{k}: {c} in checkpoint vs {m} in model" for k, c, m in refused]
            raise CheckpointMismatchError(
                f"Checkpoint {source!r} does not fit this {type(self.model).__name__}: "
                f"{len(refused)} key(s) have another shape: {_listing(listed)}. It is probably "
                "from another architecture, size or class count; to skip such keys on purpose "
                "(e.g. a classifier head when fine-tuning), list regular expressions matching "
                "them in MODEL.WEIGHTS_SKIP_MISMATCHED."
            )

    def _from_mask2former(self, checkpoint: Dict[str, Any], source_format: str) -> Dict[str, Any]:
        """A Mask2Former checkpoint with its decoders under this model's names (module docstring);
        raises :class:`CheckpointMismatchError` when the decoders do not fit the model."""
        source = self._loading or "the checkpoint"
        try:
            conversion = convert_mask2former(checkpoint["model"], source_format)
        except Mask2FormerConversionError as error:
            raise CheckpointMismatchError(
                f"Cannot convert Mask2Former checkpoint {source!r}: {error}"
            ) from error
        converted = conversion.state_dict
        self.logger.info(
            "%s is a Mask2Former checkpoint (%s names): %d pixel-decoder and transformer-decoder "
            "tensors converted; skipped (not loaded): %s",
            source,
            source_format,
            len(converted),
            conversion.skipped_summary() or "nothing",
        )
        model_state = {k.removeprefix("module."): v for k, v in self.model.state_dict().items()}
        decoder_keys = [
            k for k in model_state if k.startswith((PIXEL_DECODER_PREFIX, DECODER_PREFIX))
        ]
        missing = sorted(
            k for k in decoder_keys if mask2former_counterpart(k) and k not in converted
        )
        unexpected = sorted(set(converted) - set(model_state))
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(
                    f"{len(missing)} decoder weight(s) the file lacks: {_listing(missing)}"
                )
            if unexpected:
                problems.append(
                    f"{len(unexpected)} the model has no place for: {_listing(unexpected)}"
                )
            hint = " ".join(f"{k} {v}" for k, v in inferred_config(converted).items())
            raise CheckpointMismatchError(
                f"Mask2Former checkpoint {source!r} does not fit this {type(self.model).__name__}'s "
                f"decoders: {'; '.join(problems)}. Its decoders need: {hint}"
            )
        without = sorted(k for k in decoder_keys if not mask2former_counterpart(k))
        if without:
            self.logger.info(
                "Decoder parameters Mask2Former has no counterpart of keep their initialisation: %s",
                _listing(without),
            )
        cross = getattr(
            getattr(self.model, "transformer_decoder", None), "cross_attention_type", None
        )
        if cross not in (None, "masked_attention"):
            self.logger.warning(
                "Mask2Former's decoder weights start a decoder with CROSS_ATTENTION %r: the same "
                "parameters, another function (Mask2Former's is 'masked_attention')",
                cross,
            )
        rest = {k: v for k, v in checkpoint.items() if k not in ("model", "matching_heuristics")}
        return {**rest, "model": converted}

    def _load_model(self, checkpoint: Any):
        source_format = detect_mask2former_format(checkpoint.get("model", {}))
        if source_format is not None:
            checkpoint = self._from_mask2former(checkpoint, source_format)
        if self.use_ema_weights:
            if EMA_CHECKPOINT_KEY in checkpoint:
                self.logger.info(
                    "Loading the averaged weights (%s) of %s", EMA_CHECKPOINT_KEY, self._loading
                )
                checkpoint = {
                    **checkpoint,
                    "model": averaged_weights(checkpoint[EMA_CHECKPOINT_KEY]),
                }
            else:
                self.logger.warning(
                    "MODEL_EMA.ENABLED but %s has no averaged weights (%s): loading its trained "
                    "weights",
                    self._loading,
                    EMA_CHECKPOINT_KEY,
                )
        if not checkpoint.get("matching_heuristics", False):
            # Checked before anything is loaded, so a refused checkpoint changes nothing.
            self._convert_ndarray_to_tensor(checkpoint["model"])
            self.check_compatibility(checkpoint["model"])
            return super()._load_model(checkpoint)
        # Heuristic renaming (Caffe2 / pycls names) happens inside Detectron2's loader: check after.
        incompatible = super()._load_model(checkpoint)
        loaded = set(self.model.state_dict()) - set(incompatible.missing_keys)
        if not loaded and self.model.state_dict():
            raise CheckpointMismatchError(
                f"Checkpoint {self._loading!r} fits no part of this {type(self.model).__name__}"
            )
        refused = [
            m
            for m in incompatible.incorrect_shapes
            if not any(p.search(m[0]) for p in self.skip_mismatched)
        ]
        if refused:
            listed = [f"{k}: {c} in checkpoint vs {m} in model" for k, c, m in refused]
            raise CheckpointMismatchError(
                f"Checkpoint {self._loading!r} does not fit this {type(self.model).__name__}: "
                f"{len(refused)} key(s) have another shape: {_listing(listed)}"
            )
        return incompatible


__all__ = [
    "CheckpointMismatchError",
    "ClusterFormerCheckpointer",
    "NumpyOnlyUnpickler",
    "UnsafeCheckpointError",
    "atomic_torch_save",
    "atomic_write",
    "load_numpy_pickle",
]
