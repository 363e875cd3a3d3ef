"""Build a config from a YAML file and ``KEY VALUE`` overrides, with errors that say where.

Detectron2 (yacs) reports an unknown key as ``KeyError: 'Non-existent config key: MODEL.FOO'``
without naming the file, which may be any file of a ``_BASE_`` chain, and an unknown
command-line key as a bare ``AssertionError``. :func:`load_config` names the key, the file of
the chain that sets it (or the command line) and the closest known keys.

**Mask2Former's key names** are accepted where they have one meaning here
(docs/mask2former_compatibility.md has the table): ``MODEL.MASK_FORMER.*`` keys are read as their
``MODEL.CLUSTER_DECODER.*`` (or ``MODEL.SEM_SEG_HEAD.*``) counterparts, with a logged note for
each; ``MODEL.MASK_FORMER.DEC_LAYERS`` counts Mask2Former's prediction on the initial queries
(``DEC_LAYERS 10`` is 9 layers here). Keys that have no counterpart, a value this project does
not implement, or a translation that contradicts a ClusterFormer key set in the same chain raise
:class:`Mask2FormerConfigError` naming the key and the file. ``MODEL.SEM_SEG_HEAD.*``,
``INPUT.*``, ``SOLVER.*`` share Mask2Former's names already.

**Renamed keys** (:data:`clusterformer.d2.config.RENAMED_KEYS`, docs/migration.md) are read under
their new names, from a config file (any file of its ``_BASE_`` chain, a saved run's
``config.yaml`` included) and from the command line, with a warning naming both; a source that
sets a key under both names raises :class:`RenamedConfigKeyError`.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
import re
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode, get_cfg

from .config import RENAMED_KEYS, add_clusterformer_config

logger = logging.getLogger(__name__)

_KEY_IN_MESSAGE = re.compile(r"(?:Non-existent config key|Non-existent key|config key):\s*(\S+)")


def base_chain(config_file: str) -> List[str]:
    """``config_file`` and its ``_BASE_`` files, most derived first (Detectron2's resolution:
    relative to the including file unless absolute, ``~`` expanded)."""
    chain, current, seen = [], config_file, set()
    while current and current not in seen and os.path.isfile(current):
        seen.add(current)
        chain.append(current)
        with open(current) as f:
            content = yaml.safe_load(f) or {}
        base = content.get("_BASE_") if isinstance(content, dict) else None
        if not base:
            break
        base = os.path.expanduser(base)
        if not base.startswith("/"):
            base = os.path.join(os.path.dirname(current), base)
        current = base
    return chain


def _has_key(content: Any, dotted_key: str) -> bool:
    for part in dotted_key.split("."):
        if not isinstance(content, dict) or part not in content:
            return False
        content = content[part]
    return True


def file_setting(config_file: str, dotted_key: str) -> Optional[str]:
    """The most derived file of ``config_file``'s ``_BASE_`` chain that sets ``dotted_key``."""
    for path in base_chain(config_file):
        with open(path) as f:
            if _has_key(yaml.safe_load(f) or {}, dotted_key):
                return path
    return None


def close_keys(cfg: CfgNode, dotted_key: str, count: int = 3) -> List[str]:
    """Known keys of ``cfg`` that look like ``dotted_key`` (for a "did you mean" hint)."""
    known: List[str] = []

    def walk(node: Dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            known.append(name)
            if isinstance(value, dict):
                walk(value, name + ".")

    walk(cfg, "")
    depth = dotted_key.count(".")
    same_depth = [k for k in known if k.count(".") == depth]
    return difflib.get_close_matches(dotted_key, same_depth, n=count, cutoff=0.6)


def _key_of(error: BaseException) -> Optional[str]:
    match = _KEY_IN_MESSAGE.search(str(error))
    return match.group(1).strip("'\"") if match else None


def _hint(cfg: CfgNode, key: Optional[str]) -> str:
    suggestions = close_keys(cfg, key) if key else []
    return f" (did you mean {', '.join(suggestions)}?)" if suggestions else ""


# ---- renamed keys ------------------------------------------------------------------------------


class RenamedConfigKeyError(ValueError):
    """A config source that sets one key under both its old and its new name."""


def _warn_renamed(pairs: List[Tuple[str, str]], where: str) -> None:
    # One warning a source: a saved run's config.yaml sets every backbone key.
    logger.warning(
        'Renamed config keys %s, read under their new names: %s (see "Renamed config keys" '
        "in docs/migration.md)",
        where,
        ", ".join(f"{old} -> {new}" for old, new in pairs),
    )


def translate_renamed_keys(content: Dict[str, Any], config_file: str) -> bool:
    """Rewrite, in place, the old key names (:data:`RENAMED_KEYS`) of a config file's content
    (``_BASE_`` chain merged) to the new ones, with a warning for each source; ``True`` when there
    were any. Where two files of the chain set a key under its two names, the more derived file
    wins, as ``_BASE_`` overriding does (an old-style config on a current base); one file setting
    both raises :class:`RenamedConfigKeyError` naming both keys and the file."""
    flat = _flatten(content)
    chain = base_chain(config_file)

    def depth(path: str) -> int:  # 0: the most derived file
        return chain.index(path) if path in chain else len(chain)

    by_source: Dict[str, List[Tuple[str, str]]] = {}
    for old in [key for key in flat if key in RENAMED_KEYS]:
        new = RENAMED_KEYS[old]
        source = file_setting(config_file, old) or config_file
        _delete(content, old)
        by_source.setdefault(source, []).append((old, new))
        if new in flat:
            other = file_setting(config_file, new) or config_file
            if other == source:
                raise RenamedConfigKeyError(
                    f"config file {source!r} sets both {old} and its new name {new}; keep {new} "
                    "only (docs/migration.md)"
                )
            if depth(other) < depth(source):
                continue  # the new name, set by a more derived file, stays
        _set(content, new, flat[old])
    for source, pairs in by_source.items():
        _warn_renamed(pairs, f"in config file {source!r}")
    return bool(by_source)


def translate_renamed_opts(opts: Sequence[str]) -> List[str]:
    """``KEY VALUE`` command-line overrides with the old key names (:data:`RENAMED_KEYS`) replaced
    by the new ones, with a warning for each; an override given under both names raises
    :class:`RenamedConfigKeyError` naming both."""
    opts = list(opts)
    keys = set(opts[0::2])
    pairs: List[Tuple[str, str]] = []
    for i in range(0, len(opts) - 1, 2):
        old = opts[i]
        if old not in RENAMED_KEYS:
            continue
        new = RENAMED_KEYS[old]
        if new in keys:
            raise RenamedConfigKeyError(
                f"config key {old} given on the command line is the old name of {new}, also "
                f"given there; keep {new} only (docs/migration.md)"
            )
        opts[i] = new
        pairs.append((old, new))
    if pairs:
        _warn_renamed(pairs, "given on the command line")
    return opts


# ---- Mask2Former's key names ------------------------------------------------------------------


class Mask2FormerConfigError(ValueError):
    """A Mask2Former config key without one meaning here (unsupported, or contradicted)."""


_MF, _CD, _SH = "MODEL.MASK_FORMER.", "MODEL.CLUSTER_DECODER.", "MODEL.SEM_SEG_HEAD."

# Mask2Former key -> ClusterFormer key, same value.
MASK2FORMER_RENAMES: Dict[str, str] = {
    **{
        _MF + k: _CD + k
        for k in (
            "DEEP_SUPERVISION",
            "NO_OBJECT_WEIGHT",
            "CLASS_WEIGHT",
            "DICE_WEIGHT",
            "MASK_WEIGHT",
            "DIM_FEEDFORWARD",
            "PRE_NORM",
            "HIDDEN_DIM",
            "NUM_OBJECT_QUERIES",
            "ENFORCE_INPUT_PROJ",
            "SIZE_DIVISIBILITY",
            "TRAIN_NUM_POINTS",
            "OVERSAMPLE_RATIO",
            "IMPORTANCE_SAMPLE_RATIO",
            "TEST.SEMANTIC_ON",
            "TEST.INSTANCE_ON",
            "TEST.PANOPTIC_ON",
            "TEST.OBJECT_MASK_THRESHOLD",
            "TEST.OVERLAP_THRESHOLD",
        )
    },
    # Mask2Former's transformer decoder hard-codes dropout 0; MASK_FORMER.DROPOUT is read by its
    # pixel decoder's deformable encoder only.
    _MF + "DROPOUT": _SH + "DEFORMABLE_TRANSFORMER_ENCODER_DROPOUT",
}

# (key, value, the file's other Mask2Former values) -> [(ClusterFormer key, value)] ([]: the key
# states what this project does anyway); raises _UnsupportedError with the reason.
Translator = Callable[[Any, Dict[str, Any]], List[Tuple[str, Any]]]


class _UnsupportedError(Exception):
    """Raised by a translator with the reason a value is not implemented."""


def _dec_layers(value: Any, _: Dict[str, Any]) -> List[Tuple[str, Any]]:
    if not isinstance(value, int) or value < 2:
        raise _UnsupportedError(
            "Mask2Former counts its prediction on the initial queries in DEC_LAYERS, so it must be "
            f"an integer >= 2 here (one decoder layer at least), got {value!r}"
        )
    return [(_CD + "DEC_LAYERS", value - 1)]


def _nheads(value: Any, _: Dict[str, Any]) -> List[Tuple[str, Any]]:
    # Mask2Former's deformable encoder reads MASK_FORMER.NHEADS too (its
    # DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS is defined but not read).
    return [(_CD + "NHEADS", value), (_SH + "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", value)]


def _only(expected: Any, meaning: str, then: List[Tuple[str, Any]]) -> Translator:
    def translate(value: Any, _: Dict[str, Any]) -> List[Tuple[str, Any]]:
        if value != expected:
            raise _UnsupportedError(f"only {expected!r} ({meaning}) is implemented, got {value!r}")
        return list(then)

    return translate


def _postprocessing_before_inference(value: Any, keys: Dict[str, Any]) -> List[Tuple[str, Any]]:
    # ClusterFormer resizes the mask logits to the image before every inference, which is what
    # Mask2Former does when this is True or when panoptic / instance inference is on.
    if value or keys.get(_MF + "TEST.PANOPTIC_ON") or keys.get(_MF + "TEST.INSTANCE_ON"):
        return []
    raise _UnsupportedError(
        "ClusterFormer always resizes the masks to the image before semantic inference "
        "(Mask2Former's True); remove the key or set it True"
    )


MASK2FORMER_TRANSLATORS: Dict[str, Translator] = {
    _MF + "DEC_LAYERS": _dec_layers,
    _MF + "NHEADS": _nheads,
    _MF + "TRANSFORMER_DECODER_NAME": _only(
        "MultiScaleMaskedTransformerDecoder",
        "Mask2Former's decoder: CLUSTER_DECODER.CROSS_ATTENTION masked_attention",
        [(_CD + "CROSS_ATTENTION", "masked_attention")],
    ),
    _MF + "TRANSFORMER_IN_FEATURE": _only(
        "multi_scale_pixel_decoder", "the multi-scale pixel decoder's features", []
    ),
    _MF + "ENC_LAYERS": _only(0, "MaskFormer's transformer encoder is not part of Mask2Former", []),
    _MF + "TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE": _postprocessing_before_inference,
    "MODEL.META_ARCHITECTURE": _only(
        "MaskFormer", "", [("MODEL.META_ARCHITECTURE", "ClusterFormer")]
    ),
}


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: Dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _set(node: Dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, last = dotted_key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _delete(node: Dict[str, Any], dotted_key: str) -> None:
    *parents, last = dotted_key.split(".")
    chain = [node]
    for part in parents:
        chain.append(chain[-1][part])
    del chain[-1][last]
    for parent, part in zip(reversed(chain[:-1]), reversed(parents)):
        if not parent[part]:
            del parent[part]


def is_mask2former_key(dotted_key: str, value: Any = None) -> bool:
    """A key of Mask2Former's config that this project's config does not have."""
    if dotted_key == "MODEL.META_ARCHITECTURE":
        return value == "MaskFormer"
    return dotted_key.startswith((_MF, "MODEL.SWIN."))


def translate_mask2former_key(
    dotted_key: str, value: Any, context: Dict[str, Any], where: str
) -> List[Tuple[str, Any]]:
    """The ClusterFormer ``(key, value)`` pairs of one Mask2Former key; ``context`` holds the
    other keys of the same source (for the keys whose meaning depends on them); ``where`` names
    the source in errors. Raises :class:`Mask2FormerConfigError`."""
    if dotted_key in MASK2FORMER_RENAMES:
        return [(MASK2FORMER_RENAMES[dotted_key], value)]
    if dotted_key in MASK2FORMER_TRANSLATORS:
        try:
            return MASK2FORMER_TRANSLATORS[dotted_key](value, context)
        except _UnsupportedError as reason:
            raise Mask2FormerConfigError(
                f"Mask2Former config key {dotted_key} = {value!r} {where} is not supported: {reason}"
            ) from None
    if dotted_key.startswith("MODEL.SWIN."):
        raise Mask2FormerConfigError(
            f"Mask2Former config key {dotted_key} {where} is not supported: ClusterFormer has no "
            "Swin backbone (MODEL.CLUSTERFORMER_BACKBONE.* configures its backbone; a Mask2Former "
            "checkpoint's backbone is skipped, see docs/mask2former_compatibility.md)"
        )
    raise Mask2FormerConfigError(
        f"Mask2Former config key {dotted_key} {where} has no ClusterFormer counterpart "
        "(docs/mask2former_compatibility.md lists the supported ones)"
    )


def translate_mask2former_config(content: Dict[str, Any], config_file: str) -> bool:
    """Rewrite, in place, the Mask2Former keys of a config file's content (``_BASE_`` chain
    merged) into ClusterFormer keys, logging each; ``True`` when there were any.

    Where a file of the chain also sets a translated key under its ClusterFormer name, the more
    derived file wins, as ``_BASE_`` overriding does; the same file setting both with different
    values is ambiguous: :class:`Mask2FormerConfigError` names both keys and the file.
    """
    flat = _flatten(content)
    found = {k: v for k, v in flat.items() if is_mask2former_key(k, v)}
    if not found:
        return False
    chain = base_chain(config_file)

    def depth(path: str) -> int:  # 0: the most derived file
        return chain.index(path) if path in chain else len(chain)

    for key, value in found.items():
        source = file_setting(config_file, key) or config_file
        pairs = translate_mask2former_key(key, value, found, f"in config file {source!r}")
        if key not in (target for target, _ in pairs):
            _delete(content, key)
        if not pairs:
            logger.info(
                "Config %s: Mask2Former key %s = %r is what ClusterFormer does; dropped",
                source,
                key,
                value,
            )
        for target, new_value in pairs:
            if target != key and target in flat and flat[target] != new_value:
                other = file_setting(config_file, target) or config_file
                if other == source:
                    raise Mask2FormerConfigError(
                        f"ambiguous config: {source!r} sets Mask2Former key {key} = {value!r}, "
                        f"which means {target} = {new_value!r}, and {target} = {flat[target]!r}; "
                        "keep one of the two"
                    )
                if depth(other) < depth(source):
                    logger.info(
                        "Config %s: Mask2Former key %s = %r is overridden by %s = %r in %s",
                        source,
                        key,
                        value,
                        target,
                        flat[target],
                        other,
                    )
                    continue
            flat[target] = new_value
            _set(content, target, new_value)
            logger.info(
                "Config %s: Mask2Former key %s = %r read as %s = %r",
                source,
                key,
                value,
                target,
                new_value,
            )
    return True


def merge_config_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)``; an unknown or mistyped key raises ``KeyError`` /
    ``ValueError`` naming the key and the file of the ``_BASE_`` chain that sets it. Renamed and
    Mask2Former key names are translated first (module docstring)."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file!r} does not exist")
    content = type(cfg).load_yaml_with_base(config_file, allow_unsafe=True)
    try:
        renamed = translate_renamed_keys(content, config_file)
        if translate_mask2former_config(content, config_file) or renamed:
            # The translated chain, already merged, goes through Detectron2's own file merge
            # (its version handling included) as one file.
            with tempfile.TemporaryDirectory() as folder:
                translated = os.path.join(folder, os.path.basename(config_file))
                with open(translated, "w") as f:
                    yaml.dump(content, f)
                cfg.merge_from_file(translated)
        else:
            cfg.merge_from_file(config_file)
    except (Mask2FormerConfigError, RenamedConfigKeyError):
        raise
    except (KeyError, ValueError, AssertionError) as error:
        message = error.args[0] if error.args else str(error)
        key = _key_of(error)
        where = (file_setting(config_file, key) if key else None) or config_file
        chain = f" (included by {config_file!r})" if where != config_file else ""
        error_type = ValueError if isinstance(error, ValueError) else KeyError
        raise error_type(
            f"{message} — set in config file {where!r}{chain}{_hint(cfg, key)}"
        ) from error


def merge_config_opts(cfg: CfgNode, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)``; an unknown key raises ``KeyError`` naming it and saying it
    came from the command line, an odd-length list ``ValueError``. Renamed and Mask2Former key
    names are translated (module docstring)."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(
            f"Config overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
        )
    opts = translate_renamed_opts(opts)
    for key, value in zip(opts[0::2], opts[1::2]):
        if is_mask2former_key(key, value):
            pairs = _translate_opt(key, value)
        else:
            pairs = [(key, value)]
        for name, setting in pairs:
            _merge_opt(cfg, name, setting)


def _translate_opt(key: str, value: str) -> List[Tuple[str, Any]]:
    """A Mask2Former command-line override as ClusterFormer ``(key, value)`` pairs."""
    try:
        decoded = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        decoded = value
    where = "given on the command line"
    pairs = translate_mask2former_key(key, decoded, {key: decoded}, where)
    for target, new_value in pairs:
        logger.info(
            "Command line: Mask2Former key %s %s read as %s %r", key, value, target, new_value
        )
    return [(target, repr(new_value)) for target, new_value in pairs]


def _merge_opt(cfg: CfgNode, key: str, value: str) -> None:
    try:
        cfg.merge_from_list([key, value])
    except AssertionError as error:  # yacs asserts that the key exists
        raise KeyError(
            f"Unknown config key {key!r} given on the command line{_hint(cfg, key)}"
        ) from error
    except KeyError as error:  # e.g. a renamed key
        message = error.args[0] if error.args else str(error)
        raise KeyError(f"Config key {key!r} given on the command line: {message}") from error
    except ValueError as error:
        raise ValueError(f"Config key {key!r} given on the command line: {error}") from error


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2's defaults + every ClusterFormer key, then ``config_file``, then ``opts``
    (``["KEY", "VALUE", ...]``); not frozen. Errors name the key and where it was set; renamed
    keys are read under their new names (module docstring). Every config file goes through
    here: the repository's, a user's, and a saved run's ``OUTPUT_DIR/config.yaml``."""
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    merge_config_opts(cfg, opts)
    return cfg
