"""tools/experiments/shapes_reference.py: the reference model's curve and published metrics."""

import json

import pytest

from tools.experiments import shapes_reference as reference


def _evaluation(iteration, value):
    return {"iteration": iteration, **dict.fromkeys(reference.METRICS, value)}


def test_curve_has_one_evaluation_per_iteration_the_last_logged_winning(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [
        {"iteration": 19, "total_loss": 3.0},
        _evaluation(999, 10.0),
        _evaluation(1999, 20.0),
        {"iteration": 1519, "total_loss": 2.0},  # a resumed run logs on from its checkpoint
        _evaluation(1999, 21.0),
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    curve = reference.evaluations(str(path))
    assert [row["iteration"] for row in curve] == [1000, 2000]
    assert curve[1]["panoptic_seg/PQ"] == 21.0


def test_a_run_without_evaluations_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": 19, "total_loss": 3.0}) + "\n")
    with pytest.raises(ValueError, match="metrics.json holds no evaluation"):
        reference.evaluations(str(path))


def test_markdown_lists_the_curve_and_the_published_row():
    report = {
        "command": "python tools/experiments/shapes_reference.py",
        "date": "2026-12-02",
        "revision": "abc1234",
        "machine": "x86_64",
        "weights": "w.pth",
        "curve": [{"iteration": 1000, **dict.fromkeys(reference.METRICS, 1.0)}],
        "published": dict.fromkeys(reference.METRICS, 2.0),
        "curve_largest_component": False,
        "published_largest_component": True,
    }
    text = reference.markdown(report)
    assert "| 1000 | 1.00 |" in text
    assert "**published** (float16, `w.pth`) | **2.00**" in text
    assert "(float32), instance masks and boxes with every region" in text
    assert "boxes reduced to their largest connected region" in text


def test_the_flag_is_read_from_each_config(tmp_path):
    (tmp_path / "on.yaml").write_text(
        "MODEL:\n  CLUSTER_DECODER:\n    TEST:\n      INSTANCE_LARGEST_COMPONENT: true\n"
    )
    (tmp_path / "old.yaml").write_text("MODEL:\n  CLUSTER_DECODER:\n    TEST: {}\n")
    assert reference.largest_component(str(tmp_path / "on.yaml")) is True
    assert reference.largest_component(str(tmp_path / "old.yaml")) is False


def _run_dir(tmp_path, name, decoder, values, seed=0):
    run = tmp_path / name
    run.mkdir()
    cross_attention = f"    CROSS_ATTENTION: {decoder}\n" if decoder else ""
    (run / "config.yaml").write_text(
        "MODEL:\n  CLUSTER_DECODER:\n"
        + cross_attention
        + f"SEED: {seed}\nSOLVER:\n  MAX_ITER: 2000\n"
    )
    lines = [
        {"iteration": 999 + 1000 * i, **dict.fromkeys(reference.METRICS, v)}
        for i, v in enumerate(values)
    ]
    (run / "metrics.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(run)


@pytest.fixture
def convergence(tmp_path, monkeypatch):
    from tools.experiments import shapes_decoder_convergence as convergence

    monkeypatch.setattr(convergence, "REPORT", str(tmp_path / "report"))
    monkeypatch.setattr(convergence, "RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(convergence, "PLOT", str(tmp_path / "curves.png"))
    return convergence


def test_decoder_convergence_compares_the_arms_at_common_iterations(tmp_path, convergence):
    clustering = _run_dir(tmp_path, "clustering", None, [10.0, 30.0])
    masked = _run_dir(tmp_path, "masked", "masked_attention", [12.0])
    assert convergence.main([clustering, masked]) == 0
    assert json.loads((tmp_path / "runs" / "seed_0.json").read_text())["seed"] == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["by_seed"]["0"]["rows"]
    assert [row["iteration"] for row in rows] == [1000]
    assert rows[0]["difference:panoptic_seg/PQ_th"] == -2.0
    assert "| 1000 | 10.00 / 12.00 / -2.00 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_decoder_convergence_averages_the_recorded_seeds(tmp_path, convergence):
    """Each seed is recorded on its own; the report is, at each iteration, the mean (and sample
    std) over the seeds evaluated there, with the seeds in which clustering is ahead; a seed
    stopped early counts up to its last evaluation and is said to have stopped."""
    for seed, (a, b) in enumerate([([10.0, 30.0], [12.0, 20.0]), ([20.0], [14.0])]):
        clustering = _run_dir(tmp_path, f"c{seed}", None, a, seed=seed)
        masked = _run_dir(tmp_path, f"m{seed}", "masked_attention", b, seed=seed)
        assert convergence.main([clustering, masked]) == 0
    records = [json.loads((tmp_path / "runs" / f"seed_{s}.json").read_text()) for s in (0, 1)]
    assert [r["complete"] for r in records] == [True, False]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["seeds"] == [0, 1]
    first, second = report["mean"]
    metric = "panoptic_seg/PQ_th"
    assert (first["iteration"], first["seeds"]) == (1000, 2)
    assert first[f"clustering:{metric}"] == 15.0
    assert first[f"masked_attention:{metric}"] == 13.0
    assert first[f"difference:{metric}"] == 2.0
    assert first[f"clustering:{metric}:std"] == pytest.approx(50**0.5)
    assert first[f"clustering_ahead:{metric}"] == 1
    assert (second["iteration"], second["seeds"], second[f"difference:{metric}"]) == (2000, 1, 10.0)
    assert second[f"clustering:{metric}:std"] == 0.0
    text = (tmp_path / "report.md").read_text()
    assert "15.00 ± 7.07 / 13.00 ± 1.41 / +2.00 (1/2)" in text
    assert text.count("stopped before the end of its schedule") == 1
    # Rebuilding from the records alone gives the same mean.
    assert convergence.main(["--report"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["mean"] == report["mean"]


def test_decoder_convergence_refuses_swapped_runs(tmp_path, convergence):
    clustering = _run_dir(tmp_path, "clustering", None, [10.0])
    masked = _run_dir(tmp_path, "masked", "masked_attention", [12.0])
    with pytest.raises(SystemExit):
        convergence.main([masked, clustering])


@pytest.mark.parametrize("seeds", [(0, 1), (-1, -1)], ids=["mixed", "random"])
def test_decoder_convergence_refuses_mixed_or_random_seeds(tmp_path, convergence, seeds, capsys):
    clustering = _run_dir(tmp_path, "clustering", None, [10.0], seed=seeds[0])
    masked = _run_dir(tmp_path, "masked", "masked_attention", [12.0], seed=seeds[1])
    with pytest.raises(SystemExit):
        convergence.main([clustering, masked])
    assert "seed" in capsys.readouterr().err.lower()
    assert not (tmp_path / "runs").exists()


def test_decoder_convergence_report_needs_a_recorded_seed(convergence, capsys):
    with pytest.raises(SystemExit):
        convergence.main(["--report"])
    assert "no seed recorded" in capsys.readouterr().err


def test_decoder_convergence_names_seeds_recorded_with_another_config(tmp_path, convergence):
    """A seed recorded when the recipe lived in another file is named with that file; with every
    seed on the current config the sentence is absent."""
    for seed in (0, 1):
        clustering = _run_dir(tmp_path, f"c{seed}", None, [10.0], seed=seed)
        masked = _run_dir(tmp_path, f"m{seed}", "masked_attention", [12.0], seed=seed)
        assert convergence.main([clustering, masked]) == 0
    assert "recorded with" not in (tmp_path / "report.md").read_text()
    record_path = tmp_path / "runs" / "seed_1.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "config": "configs/old.yaml"}))
    assert convergence.main(["--report"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert (
        f"Seed 1 was recorded with configs/old.yaml, which held this recipe before {convergence.CONFIG}"
        in text
    )
