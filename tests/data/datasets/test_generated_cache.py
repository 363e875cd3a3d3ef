"""The generic once-only, atomic generation of data set folders."""

import os
import threading

import pytest

from clusterformer.data.datasets.generated_cache import (
    ensure_generated,
    is_up_to_date,
    read_manifest,
    write_manifest,
)

IDENTITY = {"generator": "test", "version": 1}


def _writer(calls, identity=IDENTITY):
    def generate(folder):
        calls.append(folder)
        with open(os.path.join(folder, "data.txt"), "w") as f:
            f.write("x")
        write_manifest(folder, {**identity, "counts": 1})

    return generate


def test_generates_once_then_reuses(tmp_path):
    root, calls = str(tmp_path / "ds"), []
    assert ensure_generated(root, IDENTITY, _writer(calls), description="test set") == root
    ensure_generated(root, IDENTITY, _writer(calls), description="test set")
    assert len(calls) == 1 and read_manifest(root)["counts"] == 1
    # A different identity regenerates.
    version_2 = {**IDENTITY, "version": 2}
    ensure_generated(root, version_2, _writer(calls, version_2), description="test set")
    assert len(calls) == 2


def test_failed_generation_leaves_nothing_that_looks_complete(tmp_path):
    root = str(tmp_path / "ds")

    def broken(folder):
        write_manifest(folder, IDENTITY)  # even a manifest written early does not count
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ensure_generated(root, IDENTITY, broken, description="test set")
    assert not os.path.exists(root) and not is_up_to_date(root, IDENTITY)
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []


def test_generator_without_manifest_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="manifest"):
        ensure_generated(str(tmp_path / "ds"), IDENTITY, lambda f: None, description="test set")


def test_refuses_to_replace_a_user_folder(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a generated test set"):
        ensure_generated(str(root), IDENTITY, _writer([]), description="test set")
    assert (root / "mine.txt").exists()


def test_concurrent_callers_generate_once(tmp_path):
    root, calls = str(tmp_path / "ds"), []
    threads = [
        threading.Thread(
            target=ensure_generated,
            args=(root, IDENTITY, _writer(calls)),
            kwargs={"description": "t"},
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and is_up_to_date(root, IDENTITY)
