"""The Makefile's environment targets never delete a folder they did not create."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

TARGETS = [
    ("env", "VENV", ".reference-ready", "requirements/reference.txt"),
    ("env-modern", "MODERN_VENV", ".modern-ready", "requirements/modern.txt"),
]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("target, variable, _marker, _requirements", TARGETS)
def test_existing_folder_without_marker_is_refused_and_kept(
    tmp_path, target, variable, _marker, _requirements
):
    folder = tmp_path / "my_env"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    proc = make(target, f"{variable}={folder}")
    assert proc.returncode != 0
    assert f"{folder} exists but was not created by this Makefile" in proc.stderr
    assert f"{variable}=<new folder>" in proc.stderr
    assert (folder / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(folder)) == ["precious.txt"]


@pytest.mark.parametrize("target, variable, marker, requirements", TARGETS)
def test_up_to_date_environment_is_left_alone(tmp_path, target, variable, marker, requirements):
    folder = tmp_path / "env"
    folder.mkdir()
    with open(os.path.join(REPO, requirements), "rb") as f:
        (folder / marker).write_text(hashlib.sha256(f.read()).hexdigest()[:16] + "\n")
    proc = make(target, f"{variable}={folder}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and sorted(os.listdir(folder)) == [marker]
