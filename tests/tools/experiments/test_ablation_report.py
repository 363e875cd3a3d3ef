"""A partial run of an experiment (``--only``) updates its rows and keeps the others'."""

from tools.experiments import ablation

Variant = ablation.Variant


def _row(name, opts, value, **extra):
    return {"variant": name, "config": "c.yaml", "opts": opts, "metrics": {"m": value}, **extra}


def test_merge_keeps_unmeasured_rows_in_variant_order_with_their_revision():
    variants = [
        Variant("a", "c.yaml", ["K", "1"], "first, described anew"),
        Variant("b", "c.yaml", ["K", "2"], "second"),
        Variant("c", "c.yaml", ["K", "3"], "third"),
    ]
    previous = {
        "revision": "old1234",
        "rows": [_row("a", ["K", "1"], 1.0, description="first"), _row("b", ["K", "2"], 2.0)],
    }
    new = [_row("b", ["K", "2"], 20.0, revision="new5678")]
    rows = ablation.merge_rows(new, variants, previous)
    assert [r["variant"] for r in rows] == ["a", "b"]
    assert rows[0]["metrics"] == {"m": 1.0}
    assert rows[0]["revision"] == "old1234"
    assert rows[0]["description"] == "first, described anew"
    assert rows[1] == new[0]


def test_merge_drops_a_previous_row_measured_with_other_options(capsys):
    variants = [Variant("a", "c.yaml", ["K", "1"]), Variant("b", "c.yaml", ["K", "2"])]
    previous = {"revision": "old", "rows": [_row("a", ["K", "9"], 1.0)]}
    new = [_row("b", ["K", "2"], 2.0, revision="new")]
    rows = ablation.merge_rows(new, variants, previous)
    assert [r["variant"] for r in rows] == ["b"]
    assert "a: the previous report measured other options" in capsys.readouterr().out


def test_merge_without_a_previous_report_is_the_new_rows():
    variants = [Variant("a", "c.yaml"), Variant("b", "c.yaml")]
    new = [_row("b", [], 2.0, revision="new")]
    assert ablation.merge_rows(new, variants, None) == new


def test_merge_keeps_no_previous_row_measured_with_other_overrides_of_every_run(capsys):
    variants = [Variant("a", "c.yaml", ["K", "1"]), Variant("b", "c.yaml", ["K", "2"])]
    previous = {
        "revision": "old",
        "extra_opts": ["SOLVER.MAX_ITER", "10"],
        "rows": [_row("a", ["K", "1"], 1.0)],
    }
    new = [_row("b", ["K", "2"], 2.0, revision="new")]
    assert ablation.merge_rows(new, variants, previous) == new
    assert "other overrides" in capsys.readouterr().out
    kept = ablation.merge_rows(new, variants, previous, ["SOLVER.MAX_ITER", "10"])
    assert [r["variant"] for r in kept] == ["a", "b"]
