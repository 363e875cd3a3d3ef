"""Mask2Former weights -> this project's pixel decoder and masked-attention decoder (plain PyTorch).

With ``MODEL.CLUSTER_DECODER.CROSS_ATTENTION masked_attention`` the pixel decoder
(:class:`~clusterformer.modeling.pixel_decoder.MSDeformAttnPixelDecoder`) and the transformer
decoder (:class:`~clusterformer.modeling.transformer_decoder.ClusteringTransformerDecoder`)
compute Mask2Former's functions, so Mask2Former's trained weights can start them. Two naming
schemes are read:

* ``"detectron2"``: facebookresearch/Mask2Former's ``MaskFormer`` meta-architecture, as its
  ``.pkl`` model-zoo files and ``.pth`` checkpoints hold it: ``sem_seg_head.pixel_decoder.*``
  (``MSDeformAttnPixelDecoder``) and ``sem_seg_head.predictor.*``
  (``MultiScaleMaskedTransformerDecoder``), ``backbone.*``, ``criterion.empty_weight``;
* ``"transformers"``: huggingface ``Mask2FormerForUniversalSegmentation`` (``model.`` prefix, or
  ``Mask2FormerModel`` without it): ``model.pixel_level_module.decoder.*``,
  ``model.transformer_module.*``, ``class_predictor.*``, the backbone under
  ``model.pixel_level_module.encoder.*``.

Converted keys are those of the ClusterFormer model (``pixel_decoder.*``,
``transformer_decoder.*``); the backbone and the loss buffer are not converted and are reported
in :attr:`Conversion.skipped`. :func:`to_detectron2_mask2former` writes this project's decoder
weights back under Detectron2's names (the same table read the other way).

Besides renaming, two layouts differ: the query-to-pixel cross-attention of this project has
separate ``q_proj`` / ``k_proj`` / ``v_proj`` where both Mask2Formers use
``nn.MultiheadAttention``'s fused ``in_proj_weight`` (rows ``[q; k; v]``), and transformers'
query self-attention has separate projections where this project uses the fused one. The FPN
convolutions are numbered finest first in Mask2Former (``adapter_1`` is the stride-4 lateral conv)
and coarsest first here (``lateral_convs.0``). docs/mask2former_compatibility.md has the table.

No detectron2 import: the mapping is usable from the model core, the checkpointer and
``tools/convert_mask2former.py``.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..utils.safe_pickle import UnsafeCheckpointError, load_numpy_pickle

__all__ = [
    "Conversion",
    "Mask2FormerConversionError",
    "FORMATS",
    "check_converted",
    "convert_mask2former",
    "detect_mask2former_format",
    "inferred_config",
    "load_state_dict_file",
    "mask2former_counterpart",
    "to_detectron2_mask2former",
    "to_transformers_mask2former",
]

FORMATS = ("detectron2", "transformers")
PIXEL_DECODER_PREFIX = "pixel_decoder."
DECODER_PREFIX = "transformer_decoder."
# How many keys an error message lists.
MAX_KEYS_LISTED = 20


class Mask2FormerConversionError(ValueError):
    """Keys that have no counterpart, missing keys or shape mismatches (the message lists them)."""


def _listing(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    more = f", ... ({len(keys) - MAX_KEYS_LISTED} more)" if len(keys) > MAX_KEYS_LISTED else ""
    return shown + more


# ---- the name tables ------------------------------------------------------------------------
# Each rule is (Mask2Former name, this project's name). ``{name}`` matches one dotted component
# and is copied; ``{fpn}`` is an FPN level, numbered finest first from 1 on Mask2Former's side and
# coarsest first from 0 on ours (``ours = n - theirs`` with ``n`` levels: the same formula both
# ways). The cross-attention's ``in_proj_*`` on our side is fused only inside this module: it is
# split into q/k/v projections after renaming (and fused again before renaming back).

_D2_PIXEL = "sem_seg_head.pixel_decoder."
_D2_DECODER = "sem_seg_head.predictor."
_D2_ENCODER_LAYER = _D2_PIXEL + "transformer.encoder.layers.{i}."
_D2_CROSS = _D2_DECODER + "transformer_cross_attention_layers.{i}."
_D2_SELF = _D2_DECODER + "transformer_self_attention_layers.{i}."
_PD, _TD = PIXEL_DECODER_PREFIX, DECODER_PREFIX
_PD_ENCODER_LAYER = _PD + "encoder.layers.{i}."
_TD_CROSS = _TD + "cross_attention_layers.{i}."
_TD_SELF = _TD + "self_attention_layers.{i}."
_TD_FFN = _TD + "ffn_layers.{i}."
_TD_HEADS = _TD + "prediction_heads."

DETECTRON2_RULES: Tuple[Tuple[str, str], ...] = (
    # pixel decoder (MSDeformAttnPixelDecoder)
    (_D2_PIXEL + "input_proj.{i}.{j}.{p}", _PD + "input_proj.{i}.{j}.{p}"),
    (_D2_PIXEL + "transformer.level_embed", _PD + "encoder.level_embed"),
    (_D2_ENCODER_LAYER + "self_attn.{m}.{p}", _PD_ENCODER_LAYER + "self_attn.{m}.{p}"),
    (_D2_ENCODER_LAYER + "norm1.{p}", _PD_ENCODER_LAYER + "norm_attn.{p}"),
    (_D2_ENCODER_LAYER + "linear1.{p}", _PD_ENCODER_LAYER + "linear1.{p}"),
    (_D2_ENCODER_LAYER + "linear2.{p}", _PD_ENCODER_LAYER + "linear2.{p}"),
    (_D2_ENCODER_LAYER + "norm2.{p}", _PD_ENCODER_LAYER + "norm_ffn.{p}"),
    (_D2_PIXEL + "mask_features.{p}", _PD + "mask_features.{p}"),
    # Detectron2's Conv2d keeps its norm as a submodule ``norm``; a conv without norm has a bias.
    (_D2_PIXEL + "adapter_{fpn}.weight", _PD + "lateral_convs.{fpn}.0.weight"),
    (_D2_PIXEL + "adapter_{fpn}.bias", _PD + "lateral_convs.{fpn}.0.bias"),
    (_D2_PIXEL + "adapter_{fpn}.norm.{p}", _PD + "lateral_convs.{fpn}.1.{p}"),
    (_D2_PIXEL + "layer_{fpn}.weight", _PD + "output_convs.{fpn}.0.weight"),
    (_D2_PIXEL + "layer_{fpn}.bias", _PD + "output_convs.{fpn}.0.bias"),
    (_D2_PIXEL + "layer_{fpn}.norm.{p}", _PD + "output_convs.{fpn}.1.{p}"),
    # transformer decoder (MultiScaleMaskedTransformerDecoder)
    (_D2_DECODER + "query_feat.weight", _TD + "query_feat.weight"),
    (_D2_DECODER + "query_embed.weight", _TD + "query_embed.weight"),
    (_D2_DECODER + "level_embed.weight", _TD + "level_embed.weight"),
    (_D2_DECODER + "input_proj.{i}.{p}", _TD + "input_proj.{i}.{p}"),
    (_D2_CROSS + "multihead_attn.in_proj_{p}", _TD_CROSS + "in_proj_{p}"),
    (_D2_CROSS + "multihead_attn.out_proj.{p}", _TD_CROSS + "out_proj.{p}"),
    (_D2_CROSS + "norm.{p}", _TD_CROSS + "norm.{p}"),
    (_D2_SELF + "self_attn.in_proj_{p}", _TD_SELF + "attn.in_proj_{p}"),
    (_D2_SELF + "self_attn.out_proj.{p}", _TD_SELF + "attn.out_proj.{p}"),
    (_D2_SELF + "norm.{p}", _TD_SELF + "norm.{p}"),
    (_D2_DECODER + "transformer_ffn_layers.{i}.{m}.{p}", _TD_FFN + "{m}.{p}"),
    (_D2_DECODER + "decoder_norm.{p}", _TD_HEADS + "norm.{p}"),
    (_D2_DECODER + "class_embed.{p}", _TD_HEADS + "class_embed.{p}"),
    (_D2_DECODER + "mask_embed.layers.{i}.{p}", _TD_HEADS + "mask_embed.layers.{i}.{p}"),
)

_HF_PIXEL = "model.pixel_level_module.decoder."
_HF_ENCODER_LAYER = _HF_PIXEL + "encoder.layers.{i}."
_HF_MODULE = "model.transformer_module."
_HF_LAYER = _HF_MODULE + "decoder.layers.{i}."

TRANSFORMERS_RULES: Tuple[Tuple[str, str], ...] = (
    # pixel decoder (Mask2FormerPixelDecoder)
    (_HF_PIXEL + "input_projections.{i}.{j}.{p}", _PD + "input_proj.{i}.{j}.{p}"),
    (_HF_PIXEL + "level_embed", _PD + "encoder.level_embed"),
    (_HF_ENCODER_LAYER + "self_attn.{m}.{p}", _PD_ENCODER_LAYER + "self_attn.{m}.{p}"),
    (_HF_ENCODER_LAYER + "self_attn_layer_norm.{p}", _PD_ENCODER_LAYER + "norm_attn.{p}"),
    (_HF_ENCODER_LAYER + "fc1.{p}", _PD_ENCODER_LAYER + "linear1.{p}"),
    (_HF_ENCODER_LAYER + "fc2.{p}", _PD_ENCODER_LAYER + "linear2.{p}"),
    (_HF_ENCODER_LAYER + "final_layer_norm.{p}", _PD_ENCODER_LAYER + "norm_ffn.{p}"),
    (_HF_PIXEL + "mask_projection.{p}", _PD + "mask_features.{p}"),
    # nn.Sequential(conv, GroupNorm[, ReLU]): the same indices as this project's ConvNormAct.
    (_HF_PIXEL + "adapter_{fpn}.{j}.{p}", _PD + "lateral_convs.{fpn}.{j}.{p}"),
    (_HF_PIXEL + "layer_{fpn}.{j}.{p}", _PD + "output_convs.{fpn}.{j}.{p}"),
    # transformer decoder (Mask2FormerTransformerModule + the class predictor)
    (_HF_MODULE + "queries_features.weight", _TD + "query_feat.weight"),
    (_HF_MODULE + "queries_embedder.weight", _TD + "query_embed.weight"),
    (_HF_MODULE + "level_embed.weight", _TD + "level_embed.weight"),
    (_HF_MODULE + "input_projections.{i}.{p}", _TD + "input_proj.{i}.{p}"),
    (_HF_LAYER + "cross_attn.in_proj_{p}", _TD_CROSS + "in_proj_{p}"),
    (_HF_LAYER + "cross_attn.out_proj.{p}", _TD_CROSS + "out_proj.{p}"),
    (_HF_LAYER + "cross_attn_layer_norm.{p}", _TD_CROSS + "norm.{p}"),
    # transformers' self-attention has q/k/v projections: fused into in_proj_* before renaming.
    (_HF_LAYER + "self_attn.in_proj_{p}", _TD_SELF + "attn.in_proj_{p}"),
    (_HF_LAYER + "self_attn.out_proj.{p}", _TD_SELF + "attn.out_proj.{p}"),
    (_HF_LAYER + "self_attn_layer_norm.{p}", _TD_SELF + "norm.{p}"),
    (_HF_LAYER + "fc1.{p}", _TD_FFN + "linear1.{p}"),
    (_HF_LAYER + "fc2.{p}", _TD_FFN + "linear2.{p}"),
    (_HF_LAYER + "final_layer_norm.{p}", _TD_FFN + "norm.{p}"),
    (_HF_MODULE + "decoder.layernorm.{p}", _TD_HEADS + "norm.{p}"),
    (
        _HF_MODULE + "decoder.mask_predictor.mask_embedder.{i}.0.{p}",
        _TD_HEADS + "mask_embed.layers.{i}.{p}",
    ),
    ("class_predictor.{p}", _TD_HEADS + "class_embed.{p}"),
)

RULES = {"detectron2": DETECTRON2_RULES, "transformers": TRANSFORMERS_RULES}

# Keys that are not the decoders' weights: (regular expression, why they are not converted).
SKIPPED = {
    "detectron2": (
        (r"^backbone\.", "backbone (not converted: ClusterFormer has its own)"),
        (r"^criterion\.", "loss buffer (the criterion is rebuilt from the config)"),
        (r"^pixel_(mean|std)$", "input normalisation (set by MODEL.PIXEL_MEAN / PIXEL_STD)"),
    ),
    "transformers": (
        (
            r"^model\.pixel_level_module\.encoder\.",
            "backbone (not converted: ClusterFormer has its own)",
        ),
        (r"^criterion\.", "loss buffer (the criterion is rebuilt from the config)"),
    ),
}

# Detectron2 Mask2Former's own renaming of old checkpoints (its decoder's _load_from_state_dict).
_LEGACY_DETECTRON2 = ((".predictor.static_query.", ".predictor.query_feat."),)

_FIELD = re.compile(r"\{(\w+)\}")


def _compile(template: str) -> re.Pattern:
    """``a.{i}.b`` -> ``^a\\.(?P<i>[^.]+)\\.b$`` (``{fpn}``: digits)."""
    parts, last = [], 0
    for match in _FIELD.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        name = match.group(1)
        parts.append(f"(?P<{name}>\\d+)" if name in ("fpn", "i") else f"(?P<{name}>[^.]+)")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("^" + "".join(parts) + "$")


def _rename(
    state: Mapping[str, Any], rules: Sequence[Tuple[str, str]]
) -> Tuple[Dict[str, Any], List[str]]:
    """Rename by ``(source template, target template)`` rules; returns the renamed dict and the
    keys no rule matched. ``{fpn}`` becomes ``n - fpn`` (see the tables' comment)."""
    compiled = [(_compile(src), dst) for src, dst in rules]
    matches: List[Tuple[str, str, Dict[str, str]]] = []
    unmatched: List[str] = []
    for key in state:
        for pattern, dst in compiled:
            found = pattern.match(key)
            if found:
                matches.append((key, dst, found.groupdict()))
                break
        else:
            unmatched.append(key)
    levels = {int(g["fpn"]) for _, _, g in matches if "fpn" in g}
    # Both sides number n levels: 1..n (finest first) or 0..n-1 (coarsest first).
    n = 0 if not levels else max(levels) + 1 if min(levels) == 0 else max(levels)
    out: Dict[str, Any] = {}
    for key, dst, fields in matches:
        if "fpn" in fields:
            fields = {**fields, "fpn": str(n - int(fields["fpn"]))}
        new_key = dst.format(**fields)
        if new_key in out:
            raise Mask2FormerConversionError(f"two checkpoint keys map to {new_key!r}")
        out[new_key] = state[key]
    return out, unmatched


def _to_tensor(value: Any) -> Any:
    """numpy arrays (Detectron2 ``.pkl``) -> tensors; anything else unchanged."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


_QKV = ("q_proj", "k_proj", "v_proj")


def _fuse_qkv(state: Dict[str, Any], prefix_pattern: str, fused_prefix: str) -> Dict[str, Any]:
    """Replace ``<prefix>{q,k,v}_proj.{weight,bias}`` by ``<fused_prefix>in_proj_{weight,bias}``
    (rows ``[q; k; v]``, ``nn.MultiheadAttention``'s layout) for every prefix matching
    ``prefix_pattern`` (a regular expression ending before ``q_proj``; ``fused_prefix`` may use
    its groups)."""
    pattern = re.compile("^(" + prefix_pattern + r")q_proj\.(weight|bias)$")
    out = dict(state)
    for key in list(state):
        found = pattern.match(key)
        if not found:
            continue
        prefix, param = found.group(1), found.group(found.lastindex)
        parts = [f"{prefix}{name}.{param}" for name in _QKV]
        missing = [p for p in parts if p not in state]
        if missing:
            raise Mask2FormerConversionError(
                f"attention projections incomplete: {_listing(missing)} missing beside {key!r}"
            )
        fused = found.expand(fused_prefix) + f"in_proj_{param}"
        out[fused] = torch.cat([_to_tensor(state[p]) for p in parts], dim=0)
        for p in parts:
            del out[p]
    return out


def _split_qkv(state: Dict[str, Any], prefix_pattern: str) -> Dict[str, Any]:
    """Inverse of :func:`_fuse_qkv` in place of the same prefix: ``<prefix>in_proj_{weight,bias}``
    -> ``<prefix>{q,k,v}_proj.{weight,bias}`` (thirds of the rows)."""
    pattern = re.compile("^(" + prefix_pattern + r")in_proj_(weight|bias)$")
    out: Dict[str, Any] = {}
    for key, value in state.items():
        found = pattern.match(key)
        if not found:
            out[key] = value
            continue
        prefix, param = found.group(1), found.group(found.lastindex)
        value = _to_tensor(value)
        if value.shape[0] % 3:
            raise Mask2FormerConversionError(
                f"{key!r}: a fused q/k/v projection needs 3 * C rows, got shape {tuple(value.shape)}"
            )
        for name, chunk in zip(_QKV, value.chunk(3, dim=0)):
            out[f"{prefix}{name}.{param}"] = chunk.clone()
    return out


_OUR_CROSS = re.escape(DECODER_PREFIX) + r"cross_attention_layers\.\d+\."
# transformers' query self-attention, whose q/k/v projections are separate.
_HF_SELF_ATTN = re.escape(_HF_MODULE) + r"decoder\.layers\.\d+\.self_attn\."


# ---- detection and conversion ---------------------------------------------------------------


def _strip_wrappers(state: Mapping[str, Any]) -> Dict[str, Any]:
    """Remove DistributedDataParallel's ``module.`` prefix."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def detect_mask2former_format(state: Mapping[str, Any]) -> Optional[str]:
    """``"detectron2"`` or ``"transformers"`` when ``state`` holds Mask2Former decoder weights
    under that scheme's names, else ``None`` (e.g. a ClusterFormer or ImageNet checkpoint)."""
    keys = list(_strip_wrappers(state))
    if any(k.startswith((_D2_PIXEL, _D2_DECODER)) for k in keys):
        return "detectron2"
    hf_roots = ("pixel_level_module.decoder.", "transformer_module.")
    if any(k.startswith(tuple("model." + r for r in hf_roots) + hf_roots) for k in keys):
        return "transformers"
    return None


@dataclass
class Conversion:
    """The result of :func:`convert_mask2former`.

    Attributes:
        state_dict: ``{ClusterFormer key: tensor}``, keys under ``pixel_decoder.`` and
            ``transformer_decoder.``.
        source_format: ``"detectron2"`` or ``"transformers"``.
        skipped: ``{checkpoint key: why}`` for keys deliberately not converted (backbone, loss
            buffer).
        unmapped: checkpoint keys no rule knows (empty unless ``strict=False``).
    """

    state_dict: Dict[str, Tensor]
    source_format: str
    skipped: Dict[str, str] = field(default_factory=dict)
    unmapped: List[str] = field(default_factory=list)

    def module_state(self, prefix: str) -> Dict[str, Tensor]:
        """The keys under ``prefix`` (``"pixel_decoder."`` / ``"transformer_decoder."``) with the
        prefix removed: a state dict of that module alone."""
        return {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def skipped_summary(self) -> str:
        """``"<count> <why>"`` per reason, e.g. ``"327 backbone (...)"``."""
        counts: Dict[str, int] = {}
        for why in self.skipped.values():
            counts[why] = counts.get(why, 0) + 1
        return "; ".join(f"{n} {why}" for why, n in counts.items())


def convert_mask2former(
    state: Mapping[str, Any], source_format: Optional[str] = None, *, strict: bool = True
) -> Conversion:
    """Mask2Former's pixel-decoder and transformer-decoder weights under ClusterFormer's names.

    Args:
        state: a Mask2Former state dict (``{name: tensor or numpy array}``; the ``"model"`` entry
            of a checkpoint file). A ``module.`` prefix (DDP) is removed.
        source_format: ``"detectron2"`` or ``"transformers"``; ``None``: detected from the keys.
        strict: raise :class:`Mask2FormerConversionError` listing the keys that are neither
            converted nor known to be skipped; ``False``: report them in ``unmapped``.

    Returns:
        a :class:`Conversion`; its values are tensors (numpy arrays are converted), sharing
        memory with ``state`` where no layout change was needed.
    """
    state = _strip_wrappers(state)
    if source_format is None:
        source_format = detect_mask2former_format(state)
        if source_format is None:
            raise Mask2FormerConversionError(
                "not a Mask2Former checkpoint: no key under sem_seg_head.pixel_decoder. / "
                "sem_seg_head.predictor. (Detectron2) or model.pixel_level_module.decoder. / "
                f"model.transformer_module. (transformers); keys: {_listing(sorted(state))}"
            )
    if source_format not in FORMATS:
        raise Mask2FormerConversionError(
            f"source_format must be one of {FORMATS}, got {source_format!r}"
        )
    if source_format == "transformers" and not any(k.startswith("model.") for k in state):
        # Mask2FormerModel (no segmentation head) has the same keys without "model.".
        state = {
            ("model." + k if not k.startswith("class_predictor.") else k): v
            for k, v in state.items()
        }
    if source_format == "detectron2":
        for old, new in _LEGACY_DETECTRON2:
            state = {k.replace(old, new): v for k, v in state.items()}

    skipped: Dict[str, str] = {}
    convertible: Dict[str, Any] = {}
    for key, value in state.items():
        why = next((w for p, w in SKIPPED[source_format] if re.search(p, key)), None)
        if why is None:
            convertible[key] = value
        else:
            skipped[key] = why
    if source_format == "transformers":
        convertible = _fuse_qkv(convertible, _HF_SELF_ATTN, r"\1")
    renamed, unmapped = _rename(convertible, RULES[source_format])
    if unmapped and strict:
        raise Mask2FormerConversionError(
            f"{len(unmapped)} key(s) of the {source_format} Mask2Former checkpoint have no "
            f"ClusterFormer counterpart: {_listing(sorted(unmapped))}. Is it a Mask2Former with "
            "the MSDeformAttnPixelDecoder and MultiScaleMaskedTransformerDecoder?"
        )
    converted = _split_qkv({k: _to_tensor(v) for k, v in renamed.items()}, _OUR_CROSS)
    return Conversion(converted, source_format, skipped, sorted(unmapped))


def _rename_ours(
    state: Mapping[str, Tensor], rules: Sequence[Tuple[str, str]], scheme: str
) -> Dict[str, Tensor]:
    """This project's decoder weights (cross-attention q/k/v fused) renamed by ``rules`` read
    backwards; raises naming ``scheme`` for a decoder key no rule knows."""
    state = _strip_wrappers(state)
    ours = {k: v for k, v in state.items() if k.startswith((PIXEL_DECODER_PREFIX, DECODER_PREFIX))}
    fused = _fuse_qkv(ours, _OUR_CROSS, r"\1")
    renamed, unmapped = _rename(fused, tuple((dst, src) for src, dst in rules))
    if unmapped:
        raise Mask2FormerConversionError(
            f"{len(unmapped)} decoder key(s) have no {scheme} counterpart: "
            f"{_listing(sorted(unmapped))}"
        )
    return renamed


def to_detectron2_mask2former(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """This project's decoder weights (``pixel_decoder.*``, ``transformer_decoder.*``; other keys
    are left out) under Detectron2 Mask2Former's names: the inverse of
    ``convert_mask2former(..., "detectron2")``.

    Raises :class:`Mask2FormerConversionError` for a decoder key Mask2Former has no counterpart
    of (e.g. a clustering decoder's box head, or a semantic head).
    """
    return _rename_ours(state, DETECTRON2_RULES, "Mask2Former")


_INVERSE_PATTERNS = [_compile(dst) for _, dst in DETECTRON2_RULES]
_OUR_QKV = re.compile(r"^(" + _OUR_CROSS + r")[qkv]_proj\.(weight|bias)$")


def mask2former_counterpart(key: str) -> bool:
    """Whether a ClusterFormer model key (``pixel_decoder.*`` / ``transformer_decoder.*``) has a
    Mask2Former counterpart, i.e. is filled by a converted Mask2Former checkpoint (a box head,
    the anchors, a semantic head or a mask-shape embedding are not)."""
    key = _OUR_QKV.sub(r"\1in_proj_\2", key)
    return any(pattern.match(key) for pattern in _INVERSE_PATTERNS)


# ---- reading files --------------------------------------------------------------------------


def load_state_dict_file(path: str, *, allow_pickle: bool = False) -> Dict[str, Any]:
    """The ``{name: tensor or ndarray}`` weights of a checkpoint file.

    * ``.pkl``: a Detectron2 pickle of numpy arrays (``{"model": {...}, "__author__": ...}``, or
      the weights dict itself), read without running pickled code;
    * ``.safetensors``: transformers' ``model.safetensors`` (needs the safetensors package);
    * anything else (``.pth``, ``.bin``, ...): ``torch.load(weights_only=True)``; the weights are
      its ``"model"`` (Detectron2) or ``"state_dict"`` entry, or the file's dict itself
      (transformers' ``pytorch_model.bin``).

    ``allow_pickle`` loads files that need arbitrary unpickling (only for files you trust).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError(f"reading {path!r} needs the safetensors package") from error
        return dict(load_file(path))
    try:
        if path.endswith(".pkl"):
            data: Any = load_numpy_pickle(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"Refusing to load {path!r}: it holds pickled objects beyond tensors and arrays "
                f"({error}); unpickling them could run arbitrary code. Pass allow_pickle "
                "(--allow-pickle, MODEL.WEIGHTS_ALLOW_PICKLE) for a file you trust."
            ) from error
        if path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
        else:
            data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, Mapping):
        raise Mask2FormerConversionError(
            f"{path!r} holds a {type(data).__name__}, not a dict of weights"
        )
    for entry in ("model", "state_dict"):
        if isinstance(data.get(entry), Mapping):
            return dict(data[entry])
    return dict(data)


def to_transformers_mask2former(state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """This project's decoder weights under transformers ``Mask2FormerForUniversalSegmentation``'s
    names (without its backbone): the inverse of ``convert_mask2former(..., "transformers")``.
    Raises :class:`Mask2FormerConversionError` for a key transformers has no counterpart of."""
    renamed = _rename_ours(state, TRANSFORMERS_RULES, "transformers Mask2Former")
    return _split_qkv(renamed, _HF_SELF_ATTN)


# ---- checks against a model -----------------------------------------------------------------


def check_converted(
    converted: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    prefixes: Iterable[str] = (PIXEL_DECODER_PREFIX, DECODER_PREFIX),
) -> None:
    """Raise :class:`Mask2FormerConversionError` unless ``converted`` fills exactly the keys of
    ``target`` (a model's ``state_dict()``) under ``prefixes``, with the same shapes.

    The message lists the missing keys (decoder weights of the model the checkpoint lacks),
    the unexpected keys (converted weights the model has no place for) and the shape
    mismatches, with the hyper-parameters they suggest (:func:`inferred_config`).
    """
    prefixes = tuple(prefixes)
    wanted = {k: v for k, v in target.items() if k.startswith(prefixes)}
    missing = sorted(set(wanted) - set(converted))
    unexpected = sorted(set(converted) - set(wanted))
    mismatched = sorted(
        f"{k}: {tuple(converted[k].shape)} in checkpoint vs {tuple(wanted[k].shape)} in model"
        for k in set(converted) & set(wanted)
        if tuple(converted[k].shape) != tuple(wanted[k].shape)
    )
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing from the checkpoint: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} not in the model: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with another shape: {_listing(mismatched)}")
    hint = ", ".join(f"{k} {v}" for k, v in inferred_config(converted).items())
    raise Mask2FormerConversionError(
        "the converted Mask2Former weights do not fit the model: "
        + "; ".join(problems)
        + f". The checkpoint's decoders have {hint}; build the model with these "
        "(and MODEL.CLUSTER_DECODER.CROSS_ATTENTION masked_attention)."
    )


def inferred_config(converted: Mapping[str, Any]) -> Dict[str, Any]:
    """The config values the converted weights fix (``{"MODEL.X.Y": value}``): what a model must
    be built with to take them. Heads and sampling points are not recoverable from shapes (the
    deformable attention's outputs are ``heads * levels * points``), and are not listed."""
    td, pd = DECODER_PREFIX, PIXEL_DECODER_PREFIX

    def count(pattern: str) -> int:
        regex = re.compile(pattern)
        return len({m.group(1) for k in converted for m in [regex.match(k)] if m})

    out: Dict[str, Any] = {}
    if td + "query_feat.weight" in converted:
        queries, hidden = converted[td + "query_feat.weight"].shape
        out["MODEL.CLUSTER_DECODER.NUM_OBJECT_QUERIES"] = int(queries)
        out["MODEL.CLUSTER_DECODER.HIDDEN_DIM"] = int(hidden)
    if td + "prediction_heads.class_embed.weight" in converted:
        out["MODEL.SEM_SEG_HEAD.NUM_CLASSES"] = int(
            converted[td + "prediction_heads.class_embed.weight"].shape[0] - 1
        )
    layers = count(re.escape(td) + r"ffn_layers\.(\d+)\.")
    if layers:
        out["MODEL.CLUSTER_DECODER.DEC_LAYERS"] = layers
        out["MODEL.CLUSTER_DECODER.DIM_FEEDFORWARD"] = int(
            converted[td + "ffn_layers.0.linear1.weight"].shape[0]
        )
    projected = any(k.startswith(td + "input_proj.") for k in converted)
    encoder_layers = count(re.escape(pd) + r"encoder\.layers\.(\d+)\.")
    if encoder_layers:
        out["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS"] = encoder_layers
        out["MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD"] = int(
            converted[pd + "encoder.layers.0.linear1.weight"].shape[0]
        )
    if pd + "encoder.level_embed" in converted:
        out["MODEL.SEM_SEG_HEAD.CONVS_DIM"] = int(converted[pd + "encoder.level_embed"].shape[1])
    if pd + "mask_features.weight" in converted:
        out["MODEL.SEM_SEG_HEAD.MASK_DIM"] = int(converted[pd + "mask_features.weight"].shape[0])
    conv_dim = out.get("MODEL.SEM_SEG_HEAD.CONVS_DIM")
    hidden = out.get("MODEL.CLUSTER_DECODER.HIDDEN_DIM")
    if conv_dim is not None and hidden is not None:
        # The decoder projects its inputs when the widths differ, or when told to.
        out["MODEL.CLUSTER_DECODER.ENFORCE_INPUT_PROJ"] = projected and conv_dim == hidden
    return out
