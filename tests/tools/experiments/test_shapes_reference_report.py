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


def _run_dir(tmp_path, name, decoder, values):
    run = tmp_path / name
    run.mkdir()
    cross_attention = f"    CROSS_ATTENTION: {decoder}\n" if decoder else ""
    (run / "config.yaml").write_text(
        "MODEL:\n  CLUSTER_DECODER:\n" + cross_attention + "SOLVER:\n  MAX_ITER: 2000\n"
    )
    lines = [
        {"iteration": 999 + 1000 * i, **dict.fromkeys(reference.METRICS, v)}
        for i, v in enumerate(values)
    ]
    (run / "metrics.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return str(run)


def test_decoder_convergence_compares_the_arms_at_common_iterations(tmp_path, monkeypatch):
    from tools.experiments import shapes_decoder_convergence as convergence

    monkeypatch.setattr(convergence, "REPORT", str(tmp_path / "report"))
    monkeypatch.setattr(convergence, "PLOT", str(tmp_path / "curves.png"))
    clustering = _run_dir(tmp_path, "clustering", None, [10.0, 30.0])
    masked = _run_dir(tmp_path, "masked", "masked_attention", [12.0])
    assert convergence.main([clustering, masked]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["iteration"] for row in report["rows"]] == [1000]
    assert report["rows"][0]["difference:panoptic_seg/PQ_th"] == -2.0
    assert "| 1000 | 10.00 / 12.00 / -2.00 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_decoder_convergence_refuses_swapped_runs(tmp_path):
    from tools.experiments import shapes_decoder_convergence as convergence

    clustering = _run_dir(tmp_path, "clustering", None, [10.0])
    masked = _run_dir(tmp_path, "masked", "masked_attention", [12.0])
    with pytest.raises(SystemExit):
        convergence.main([masked, clustering])
