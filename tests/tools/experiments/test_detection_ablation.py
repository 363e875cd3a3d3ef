"""tools/experiments/shapes_detection_ablation.py on the shared runner: a finished run is read
back into the record the report is written from (no training here)."""

import json
from pathlib import Path

from tools.experiments import shapes_detection_ablation as detection


def test_finished_runs_make_the_record_and_its_report(tmp_path):
    bbox = dict.fromkeys(detection.METRICS, 1.5)
    for arm in detection.ARMS:
        run = tmp_path / "20_iterations" / arm / "seed0"
        run.mkdir(parents=True)
        (run / "eval_results.json").write_text(json.dumps({"bbox": bbox}))
        (run / "metrics.json").write_text(json.dumps({"total_loss": 2.0, "time": 0.5}) + "\n")
        (run / "run_seconds.txt").write_text("12.0")
        (run / detection.CPU_SECONDS_FILE).write_text("10.0")
    runs = [detection.run_once(arm, 0, 20, str(tmp_path)) for arm in detection.ARMS]
    committed = json.loads(
        (Path(detection.REPO) / "docs/experiments/detection_box_restriction.json").read_text()
    )
    assert [set(r) for r in runs] == [set(r) for r in committed["runs"][:2]]
    assert runs[0]["metrics"] == bbox and runs[0]["cpu_seconds"] == 10.0
    assert runs[0]["wall_seconds"] == 12.0 and runs[0]["final_total_loss"] == 2.0
    assert "BOX_RESTRICTED_ASSIGNMENT True" in runs[0]["command"]
    assert "SOLVER.STEPS (18,)" in runs[0]["command"]
    summary = detection.summarize(runs)
    assert summary["box_restricted"]["AP"] == {"mean": 1.5, "std": 0.0, "values": [1.5]}
    setup = {**committed["setup"], "total_cpu_minutes": 20.0 / 60}
    text = detection.markdown({"setup": setup, "runs": runs, "summary": summary})
    assert "| on (box-level clustering) | 1.50 ± 0.00 [1.50]" in text
