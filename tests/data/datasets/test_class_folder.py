"""load_class_folder: the generic class-folder (ImageNet layout) loader, without detectron2."""

import pytest

from clusterformer.data.datasets.class_folder import load_class_folder


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture
def class_root(tmp_path):
    root = tmp_path / "train"
    for name in [
        "b/2.png",
        "b/1.JPEG",
        "b/nested/3.jpg",
        "a/x.webp",
        "a/notes.txt",
        "a/.hidden.png",
    ]:
        _touch(root / name)
    _touch(root / "stray.png")  # files directly in the root are not labelled: ignored
    (root / ".cache").mkdir()
    return root


def test_default_classes_are_sorted_folders(class_root):
    dicts = load_class_folder(str(class_root))
    assert [(d["file_name"][len(str(class_root)) + 1 :], d["label"]) for d in dicts] == [
        ("a/x.webp", 0),
        ("b/1.JPEG", 1),
        ("b/2.png", 1),
        ("b/nested/3.jpg", 1),
    ]
    assert [d["image_id"] for d in dicts] == [0, 1, 2, 3]


def test_explicit_class_names_set_the_labels(class_root):
    dicts = load_class_folder(str(class_root), ["b", "c", "a"])
    assert [d["label"] for d in dicts] == [0, 0, 0, 2]  # "c" has no folder and no images


def test_errors_name_the_folder(tmp_path, class_root):
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_class_folder(missing)
    with pytest.raises(ValueError, match=r"train.*\['b'\]"):
        load_class_folder(str(class_root), ["a"])
    with pytest.raises(ValueError, match="duplicates"):
        load_class_folder(str(class_root), ["a", "b", "a"])
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    _touch(empty / "a" / "readme.txt")
    with pytest.raises(ValueError, match="empty.*holds no images"):
        load_class_folder(str(empty))
