"""Keep file names read from a data set's description inside that data set's folders.

An annotation JSON is data, possibly downloaded from anywhere; a ``file_name`` such as
``../../home/user/.ssh/id_rsa`` or ``/etc/passwd`` must not make a loader read (and a training
run decode, log or copy) a file outside the data set. The check is lexical (``..`` and absolute
paths after normalisation), so a data set folder that is itself a symbolic link, or that holds
links its owner made, keeps working: the JSON's content is what is not trusted. Needs no
detectron2.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable


class UnsafePathError(ValueError):
    """A data set description names a file outside the data set's folder."""


def is_inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it, lexically (after normalising ``.`` and ``..``)."""
    path = os.path.normpath(os.path.abspath(path))
    root = os.path.normpath(os.path.abspath(root))
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows)
        return False


def resolve_inside(root: str, name: Any, *, source: str, entry: str) -> str:
    """Join a file ``name`` from a data set description to ``root``, refusing names that leave it.

    Args:
        root: the folder the name is relative to.
        name: the file name as written in the description. Relative names are joined to
            ``root``; an absolute name is accepted only when it lies inside ``root``.
        source: the description file (named in the error), e.g. the JSON.
        entry: which entry of it (named in the error), e.g. ``"image id 7"``.

    Returns:
        ``os.path.join(root, name)`` (the absolute ``name`` itself when it is one).

    Raises:
        UnsafePathError: ``name`` is empty, not a string, or leads outside ``root``.
    """
    if not isinstance(name, str) or not name:
        raise UnsafePathError(
            f"{source!r}: {entry} has file name {name!r}; expected a non-empty relative path"
        )
    path = name if os.path.isabs(name) else os.path.join(root, name)
    if not is_inside(path, root) or os.path.normpath(path) == os.path.normpath(root):
        raise UnsafePathError(
            f"{source!r}: {entry} has file name {name!r}, which leads outside its folder "
            f"{root!r}; data set file names must stay inside the data set"
        )
    return path


def check_plain_name(name: Any, *, source: str, what: str) -> str:
    """Check that ``name`` is a single path component (no separator, not ``.`` / ``..``).

    Used for names that become folder names, e.g. the classes of a class-folder data set.
    Raises ``UnsafePathError`` naming ``source`` and ``what``.
    """
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(sep in name for sep in separators)
    ):
        raise UnsafePathError(
            f"{source}: {what} {name!r} is not a plain folder name (it must not be empty, "
            "'.', '..' or contain a path separator)"
        )
    return name


def check_records_inside(
    records: Iterable[Dict[str, Any]], roots: Dict[str, str], *, source: str
) -> None:
    """Check the loaded data set dicts: for each ``key -> root`` of ``roots``, every record's
    ``record[key]`` (when present) lies inside ``root``.

    For loaders that are not this project's (Detectron2's ``load_coco_json`` joins the JSON's
    ``file_name`` to the image root without a check), applied to what they return.

    Raises:
        UnsafePathError naming ``source``, the record (its ``image_id``) and the file.
    """
    for index, record in enumerate(records):
        for key, root in roots.items():
            path = record.get(key)
            if path is not None and not is_inside(path, root):
                raise UnsafePathError(
                    f"{source!r}: record #{index} (image id {record.get('image_id')!r}) has "
                    f"{key} {path!r}, outside its folder {root!r}; data set file names must "
                    "stay inside the data set"
                )
