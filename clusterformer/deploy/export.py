"""Export of the model core to TorchScript (tracing) and ONNX: tensors in, tensors out.

What is exported is the network only, on a normalised, padded image tensor:

* segmentation / detection (:class:`~clusterformer.modeling.segmenter.ClusterFormerSegmenter`
  and the Detectron2 meta-architecture built on it): ``images (1, 3, H, W)`` ->
  ``pred_logits (1, Q, K + 1)``, ``pred_masks (1, Q, H / 4, W / 4)`` (mask models),
  ``pred_boxes (1, Q, 4)`` (box models, normalised cxcywh on the canvas) and, for the clustering
  decoder, ``pixel_assignment (1, Q, h, w)``;
* classification (a backbone + :class:`~clusterformer.modeling.backbone.ClassificationHead`):
  ``images (1, 3, H, W)`` -> ``logits (1, K)``.

Normalisation, padding and every post-processing step stay in Python
(:mod:`clusterformer.modeling.postprocessing`, through the meta-architecture's ``inference``).

Both formats are made by tracing (``torch.jit.trace``; ONNX through PyTorch's TorchScript-based
exporter), so **an export is specialised to the input size it was traced at**: the backbone's
window geometry (how many windows, their padding, the centre-pooling bins) and the deformable
attention's level shapes are Python integers computed from the input shape, and tracing records
them as constants. :func:`check_input_size` (used by :mod:`.runtime`) turns a call at another
size into a clear error instead of a wrong result. Scripting is not offered: the model's
forward passes use Python dataclasses, ``**kwargs`` and dicts of optional tensors that
``torch.jit.script`` cannot compile, and would need a rewrite for no gain over tracing at a
fixed size.

The multi-scale deformable attention runs its pure-PyTorch reference (``grid_sample``, ONNX
opset >= 16) inside the export, forced by
:func:`clusterformer.modeling.ops.reference_implementation`: the compiled kernels cannot be
recorded in a traced graph.

This module needs only PyTorch (and ``onnx`` for ONNX export), not detectron2.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..modeling.ops import reference_implementation

FORMATS = ("torchscript", "onnx")
# grid_sample (the deformable attention's reference) is in ONNX from opset 16.
MIN_ONNX_OPSET = 16
DEFAULT_ONNX_OPSET = 17
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
METADATA_SUFFIX = ".json"


@dataclass
class ExportMetadata:
    """What a runtime needs to know about an export; saved next to it as ``<file>.json``.

    Attributes:
        kind: ``"segmentation"`` or ``"classification"``.
        input_shape: ``[1, 3, H, W]``, the only shape the export accepts.
        output_names: names of the outputs, in order.
        format: ``"torchscript"`` or ``"onnx"``.
        opset: ONNX opset (``None`` for TorchScript).
        extra: free-form facts (config file, weights, torch version).
    """

    kind: str
    input_shape: List[int]
    output_names: List[str]
    format: str
    opset: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def save(self, model_path: Path) -> Path:
        path = metadata_path(model_path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_path: Path) -> ExportMetadata:
        path = metadata_path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the export's metadata is missing (export_model.py writes it next to "
                f"{Path(model_path).name}); it says which input size the export accepts"
            )
        return cls(**json.loads(path.read_text()))


def metadata_path(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + METADATA_SUFFIX)


def check_input_size(images_shape: Sequence[int], metadata: ExportMetadata) -> None:
    """Raise ValueError unless ``images_shape`` is the shape the export was traced at."""
    if list(images_shape) != list(metadata.input_shape):
        raise ValueError(
            f"This {metadata.format} export takes images of shape {metadata.input_shape} only, "
            f"got {list(images_shape)}. Exports are traced, and the backbone's window geometry "
            "and the deformable attention's level shapes are fixed at the traced size; export "
            "again at this size (tools/deploy/export_model.py --height H --width W, or "
            "--sample-image)."
        )


class SegmenterOutputs(nn.Module):
    """A segmenter (anything with ``predict(images) -> dict``) as ``images -> tuple of tensors``.

    Args:
        model: a :class:`~clusterformer.modeling.segmenter.ClusterFormerSegmenter` or the
            Detectron2 ``ClusterFormer`` meta-architecture (its ``predict``).
        output_names: which entries of the decoder's dict to return, in order (see
            :func:`segmenter_output_names`).

    ``forward(images (B, 3, H, W))`` -> one tensor per name. Auxiliary (deep-supervision)
    outputs are left out: inference does not read them.
    """

    def __init__(self, model: nn.Module, output_names: Sequence[str]):
        super().__init__()
        self.model = model
        self.output_names = list(output_names)

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        outputs = self.model.predict(images)
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise KeyError(
                f"SegmenterOutputs: the decoder returned no {missing}; it returned "
                f"{sorted(k for k in outputs if k != 'aux_outputs')}"
            )
        return tuple(outputs[n] for n in self.output_names)


class ClassifierOutputs(nn.Module):
    """``backbone`` + ``head`` as ``images (B, 3, H, W) -> logits (B, K)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


def segmenter_output_names(model: nn.Module) -> List[str]:
    """The raw outputs a segmenter's decoder makes at inference: ``pred_logits``, then
    ``pred_masks`` (mask head), ``pred_boxes`` (box head), ``pixel_assignment`` (clustering
    cross-attention)."""
    decoder = model.transformer_decoder
    names = ["pred_logits"]
    if decoder.mask_on:
        names.append("pred_masks")
    if decoder.box_on:
        names.append("pred_boxes")
    if decoder.cross_attention_type == "clustering":
        names.append("pixel_assignment")
    return names


def exportable(model: nn.Module) -> Tuple[nn.Module, str, List[str]]:
    """Wrap ``model`` for export: ``(module, kind, output_names)``.

    Accepts a segmenter (has ``predict`` and ``transformer_decoder``), a classifier (has
    ``backbone`` and ``head``), or an already wrapped :class:`SegmenterOutputs` /
    :class:`ClassifierOutputs`.
    """
    if isinstance(model, SegmenterOutputs):
        return model, "segmentation", list(model.output_names)
    if isinstance(model, ClassifierOutputs):
        return model, "classification", ["logits"]
    # A wrapper takes the training flag of what it wraps (a new module is in training mode).
    if hasattr(model, "predict") and hasattr(model, "transformer_decoder"):
        names = segmenter_output_names(model)
        wrapper = SegmenterOutputs(model, names)
        wrapper.training = model.training
        return wrapper, "segmentation", names
    if hasattr(model, "backbone") and hasattr(model, "head"):
        wrapper = ClassifierOutputs(model.backbone, model.head)
        wrapper.training = model.training
        return wrapper, "classification", ["logits"]
    raise TypeError(
        f"Cannot export a {type(model).__name__}: expected a ClusterFormer segmenter (with "
        "predict() and transformer_decoder) or a classifier (with backbone and head)"
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the context; afterwards every submodule gets back its own training flag
    (not ``model.train(model.training)``: a fresh export wrapper is in training mode while the
    model it wraps may be in eval mode, and must be left so)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (:func:`eval_mode`), no gradients and the deformable attention's PyTorch
    reference."""
    with eval_mode(model), torch.no_grad(), reference_implementation():
        yield


def _check_sample(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[0] != 1 or images.shape[1] != 3:
        raise ValueError(f"export: images must be (1, 3, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.float32:
        raise ValueError(f"export: images must be float32 (normalised), got {images.dtype}")
    if images.shape[-2] % 32 or images.shape[-1] % 32:
        raise ValueError(
            f"export: H and W must be multiples of 32 (the models' size divisibility), got "
            f"{tuple(images.shape[-2:])}; pad the image first"
        )


def trace_torchscript(model: nn.Module, images: Tensor) -> Tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.trace`` of the wrapped model on ``images (1, 3, H, W)`` float32.

    Returns the traced module and the export kind. The tracer's warnings about Python values
    (shapes, the window geometry) are silenced: they are the size specialisation that
    :func:`check_input_size` guards.
    """
    _check_sample(images)
    module, kind, _ = exportable(model)
    with export_mode(module), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (images,), check_trace=False)
    return traced, kind


def export_torchscript(
    model: nn.Module, images: Tensor, path: Path, extra: Optional[Dict[str, Any]] = None
) -> ExportMetadata:
    """Trace ``model`` on ``images`` and save it to ``path`` (``.ts``) with its metadata."""
    traced, kind = trace_torchscript(model, images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    metadata = ExportMetadata(
        kind=kind,
        input_shape=list(images.shape),
        output_names=exportable(model)[2],
        format="torchscript",
        extra={"torch": torch.__version__, **(extra or {})},
    )
    metadata.save(path)
    return metadata


# ScalarType codes of the floating dtypes a traced linspace may ask for.
_SCALAR_TYPES = {5: torch.float16, 6: torch.float32, 7: torch.float64, 15: torch.bfloat16}


def _constant(value, what: str):
    """The Python value of a constant graph input of a symbolic function."""
    node = value.node()
    if node.kind() == "onnx::Constant":
        return node.t("value").item()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    raise NotImplementedError(
        f"export: linspace with a non-constant {what} is not supported (exports are traced at a "
        "fixed size, where its arguments are constants)"
    )


def _linspace_symbolic(g, start, end, steps, dtype, layout, device, pin_memory):
    """``aten::linspace`` for the TorchScript-based ONNX exporter.

    PyTorch's own symbolic (opset 9) ignores ``dtype`` and returns float64, which then promotes
    the whole graph to float64 (ONNX Runtime rejects its LayerNorms). Traced at a fixed size,
    every argument is a constant: the result is torch's own linspace, as a constant.
    """
    code = _constant(dtype, "dtype")
    if code is not None and code not in _SCALAR_TYPES:
        raise NotImplementedError(f"export: linspace of scalar type {code} is not supported")
    values = torch.linspace(
        float(_constant(start, "start")),
        float(_constant(end, "end")),
        int(_constant(steps, "steps")),
        dtype=torch.get_default_dtype() if code is None else _SCALAR_TYPES[code],
    )
    return g.op("Constant", value_t=values)


@contextlib.contextmanager
def _onnx_symbolics(opset: int) -> Iterator[None]:
    """Register the project's symbolic overrides for one export, and remove them afterwards."""
    torch.onnx.register_custom_op_symbolic("aten::linspace", _linspace_symbolic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::linspace", opset)


def export_onnx(
    model: nn.Module,
    images: Tensor,
    path: Path,
    opset: int = DEFAULT_ONNX_OPSET,
    extra: Optional[Dict[str, Any]] = None,
) -> ExportMetadata:
    """Export ``model`` traced on ``images (1, 3, H, W)`` to ONNX at ``path`` (``.onnx``).

    Uses PyTorch's TorchScript-based exporter (``dynamo=False`` where torch has both): the
    ``torch.export``-based one cannot follow the data-dependent ``.tolist()`` of the deformable
    attention's level shapes. The graph is checked with ``onnx.checker``.
    """
    if opset < MIN_ONNX_OPSET:
        raise ValueError(
            f"export_onnx: opset {opset} < {MIN_ONNX_OPSET}; the deformable attention needs "
            "GridSample (opset 16)"
        )
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "export_onnx needs the onnx package: pip install onnx onnxruntime "
            "(or pip install -e .[deploy])"
        ) from error
    _check_sample(images)
    module, kind, names = exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with export_mode(module), _onnx_symbolics(opset), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            (images,),
            str(path),
            opset_version=opset,
            input_names=["images"],
            output_names=names,
            do_constant_folding=True,
            **kwargs,
        )
    onnx.checker.check_model(str(path))
    metadata = ExportMetadata(
        kind=kind,
        input_shape=list(images.shape),
        output_names=names,
        format="onnx",
        opset=opset,
        extra={"torch": torch.__version__, "onnx": onnx.__version__, **(extra or {})},
    )
    metadata.save(path)
    return metadata


def export(
    model: nn.Module,
    images: Tensor,
    output_dir: Path,
    format: str,
    name: str = "model",
    opset: int = DEFAULT_ONNX_OPSET,
    extra: Optional[Dict[str, Any]] = None,
) -> Tuple[Path, ExportMetadata]:
    """Export to ``output_dir / (name + .ts | .onnx)``; returns the path and its metadata."""
    if format not in FORMATS:
        raise ValueError(f"export: format must be one of {FORMATS}, got {format!r}")
    path = Path(output_dir) / f"{name}{SUFFIXES[format]}"
    if format == "torchscript":
        return path, export_torchscript(model, images, path, extra)
    return path, export_onnx(model, images, path, opset, extra)


def eager_outputs(model: nn.Module, images: Tensor) -> Dict[str, Tensor]:
    """The eager model's raw outputs on ``images``, named as the export names them (its
    reference for parity checks; the compiled deformable-attention kernels run if built)."""
    module, _, names = exportable(model)
    with eval_mode(module), torch.no_grad():
        out = module(images)
    out = (out,) if isinstance(out, Tensor) else out
    return dict(zip(names, out))
