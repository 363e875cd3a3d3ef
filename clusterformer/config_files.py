"""Build a config from a YAML file and ``KEY VALUE`` overrides, with errors that say where.

Detectron2 (yacs) reports an unknown key as ``KeyError: 'Non-existent config key: MODEL.FOO'``
without naming the file, which may be any file of a ``_BASE_`` chain, and an unknown
command-line key as a bare ``AssertionError``. :func:`load_config` names the key, the file of
the chain that sets it (or the command line) and the closest known keys.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import yaml
from detectron2.config import CfgNode, get_cfg

from .config import add_clusterformer_config

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


def merge_config_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file(config_file)``; an unknown or mistyped key raises ``KeyError`` /
    ``ValueError`` naming the key and the file of the ``_BASE_`` chain that sets it."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"Config file {config_file!r} does not exist")
    try:
        cfg.merge_from_file(config_file)
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
    came from the command line, an odd-length list ``ValueError``."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(
            f"Config overrides must be KEY VALUE pairs; got an odd number of items: {opts}"
        )
    for key, value in zip(opts[0::2], opts[1::2]):
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
    (``["KEY", "VALUE", ...]``); not frozen. Errors name the key and where it was set."""
    cfg = get_cfg()
    add_clusterformer_config(cfg)
    if config_file:
        merge_config_file(cfg, config_file)
    merge_config_opts(cfg, opts)
    return cfg
