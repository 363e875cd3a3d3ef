"""tools/plot_training.py: PNG curves from a Detectron2 metrics.json; errors name file and line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tools import plot_training, summarize_run

TOOLS = Path(__file__).resolve().parents[2] / "tools"
REPO = TOOLS.parent


def write_metrics(path, records) -> str:
    with open(path, "w") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return str(path)


def training_records():
    """What train_net.py writes: losses every few iterations, an evaluation at two points, and a
    resumed run that recomputed iteration 19 (the later value counts)."""
    records = []
    for iteration in range(4, 40, 5):
        records.append(
            {
                "iteration": iteration,
                "total_loss": 10.0 / (iteration + 1),
                "loss_ce": 2.0 / (iteration + 1),
                "loss_ce_0": 3.0 / (iteration + 1),
                "loss_mask": 1.0 / (iteration + 1),
                "lr": 1e-3 * min(1.0, iteration / 20),
                "time": 0.5,
                "data_time": 0.01,
                "eta_seconds": 100.0 - iteration,
            }
        )
        if iteration in (19, 39):
            records.append(
                {
                    "iteration": iteration,
                    "panoptic_seg/PQ": float(iteration),
                    "panoptic_seg/SQ": 70.0,
                    "sem_seg/mIoU": 40.0 + iteration,
                    "sem_seg/IoU-sky": 90.0,
                }
            )
    records.append({"iteration": 19, "total_loss": 0.25, "lr": 1e-3})
    return records


def test_curves_are_written_as_png(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.json", training_records())
    written = plot_training.plot_training(metrics)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["evaluation.png", "losses.png", "lr.png"]
    for path in written:
        assert os.path.dirname(path) == str(tmp_path / "plots")
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size[0] >= 400 and png.size[1] >= 200
    # The curves hold what was logged: final-layer terms only, the resumed value, summary metrics.
    series = plot_training.read_metrics(metrics)
    assert series["total_loss"][19] == 0.25
    assert "time" not in series and "eta_seconds" not in series


def test_what_is_drawn(tmp_path, monkeypatch):
    drawn = {}

    def record_lines(path, title, curves, ylabel, log=False):
        drawn[os.path.basename(path)] = list(curves)
        return path

    def record_evaluation(path, metrics):
        drawn[os.path.basename(path)] = {task: sorted(names) for task, names in metrics.items()}
        return path

    monkeypatch.setattr(plot_training, "_plot_lines", record_lines)
    monkeypatch.setattr(plot_training, "_plot_evaluation", record_evaluation)
    plot_training.plot_training(write_metrics(tmp_path / "metrics.json", training_records()))
    assert drawn == {
        "losses.png": ["total_loss", "loss_ce", "loss_mask"],
        "lr.png": ["lr"],
        "evaluation.png": {"panoptic_seg": ["PQ", "SQ"], "sem_seg": ["mIoU"]},
    }


def test_a_run_folder_and_an_output_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_metrics(run / "metrics.json", [{"iteration": 0, "total_loss": 1.0, "lr": 0.1}])
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "plot_training.py"),
            str(run),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "o")) == ["losses.png", "lr.png"]
    assert "wrote " in proc.stdout


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"iteration": 0, "total_loss": 1.0}', '{"iteration": 1, "total_loss"'],
            "line 2: not valid JSON",
        ),
        (['{"iteration": 0, "total_loss": 1.0}', "", "[1, 2]"], "line 3: expected a JSON object"),
        (['{"total_loss": 1.0}'], "line 1: no integer 'iteration'"),
        (['{"iteration": 2.5, "total_loss": 1.0}'], "line 1: no integer 'iteration'"),
        (
            ['{"iteration": 1, "total_loss": "high"}'],
            "line 1: 'total_loss' is 'high', not a number",
        ),
        (["", ""], "holds no metrics"),
    ],
)
def test_malformed_files_are_errors_naming_file_and_line(tmp_path, lines, message):
    path = write_metrics(tmp_path / "metrics.json", lines)
    with pytest.raises(plot_training.MetricsFileError, match=re.escape(message)) as error:
        plot_training.plot_training(path)
    assert path in str(error.value)
    assert not (tmp_path / "plots").exists()


def test_missing_file_is_an_error_from_the_command_line(tmp_path):
    missing = str(tmp_path / "nowhere" / "metrics.json")
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "plot_training.py"), missing],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert f"error: Metrics file {missing!r} does not exist" in proc.stderr


def test_make_run_draws_the_curves_before_the_summary():
    """The ``run`` recipe writes the plots into $(RUN_OUTPUT)/plots, where summarize_run.py
    looks for them."""
    with open(REPO / "Makefile") as f:
        recipe = f.read().split("\nrun:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t")]
    plot = [i for i, c in enumerate(commands) if "tools/plot_training.py" in c]
    summary = [i for i, c in enumerate(commands) if "tools/summarize_run.py" in c]
    assert plot and summary and plot[0] < summary[0], commands
    assert "$(RUN_OUTPUT)/metrics.json --output $(RUN_OUTPUT)/plots" in commands[plot[0]]


def test_summarize_run_says_where_the_curves_are(tmp_path, capsys):
    results = {"sem_seg": {"mIoU": 50.0, "fwIoU": 60.0}, "sem_seg_TTA": {"mIoU": 52.0}}
    (tmp_path / "eval_results.json").write_text(json.dumps(results))
    assert summarize_run.summarize(str(tmp_path)) == 0
    assert f"python tools/plot_training.py {tmp_path}" in capsys.readouterr().out

    write_metrics(tmp_path / "metrics.json", training_records())
    plot_training.plot_training(str(tmp_path))
    assert summarize_run.summarize(str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert f"Training curves (evaluation.png, losses.png, lr.png): {tmp_path / 'plots'}" in out
    assert re.search(r"sem_seg_TTA\s+mIoU\s+52\.00", out), out
