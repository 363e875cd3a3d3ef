"""The digits classification data set: a deterministic, stratified, cached generation."""

import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from clusterformer.data.datasets import digits
from clusterformer.data.datasets.class_folder import load_class_folder
from clusterformer.data.datasets.generated_cache import read_manifest


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    return digits.ensure_digits(str(tmp_path_factory.mktemp("d") / "digits"))


def test_split_is_stratified_complete_and_disjoint():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    split = digits.split_indices(labels)
    train, val = set(split["train"].tolist()), set(split["val"].tolist())
    assert not train & val and len(train | val) == len(labels)
    for c in range(10):
        n = int((labels == c).sum())
        assert int((labels[split["val"]] == c).sum()) == round(n * digits.VAL_FRACTION)


def test_class_folders_match_scikit_learn(digits_root):
    from sklearn.datasets import load_digits

    data = load_digits()
    records = load_class_folder(os.path.join(digits_root, "val"), digits.CLASS_NAMES)
    assert len(records) == read_manifest(digits_root)["counts"]["val"] == 359
    for record in records[:20]:
        index = int(os.path.basename(record["file_name"])[:4])
        assert record["label"] == data.target[index]
        image = np.asarray(Image.open(record["file_name"]))
        assert image.shape == (32, 32) and image.dtype == np.uint8
        # Downsampled back to 8x8 the image still is the original digit.
        small = np.asarray(Image.fromarray(image).resize((8, 8), Image.BOX), dtype=np.float64)
        assert np.corrcoef(small.ravel(), data.images[index].ravel())[0, 1] > 0.95


def test_generation_is_cached(digits_root, monkeypatch):
    monkeypatch.setattr(digits, "_generate", lambda root: pytest.fail("regenerated"))
    assert digits.ensure_digits(digits_root) == digits_root
