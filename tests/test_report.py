import csv

import pytest

from rayexp.grid import TrialKey
from rayexp.report import markdown_table, summarize, write_report


def _row(backbone, seed, acc, status="FINISHED", fraction=1.0):
    return {"backbone": backbone, "dataset": "digits", "domain": "handwriting", "fraction": fraction, "seed": seed,
            "status": status, "best_test_acc": acc, "weights": "random"}


def test_best_of_three_mean_and_std():
    rows = [_row("a", 0, 0.5), _row("a", 1, 0.7), _row("a", 2, 0.6), _row("b", 0, 0.9), _row("b", 1, None, status="FAILED")]
    summaries = {s.backbone: s for s in summarize(rows)}
    a, b = summaries["a"], summaries["b"]
    assert a.best_of_3 == 0.7 and a.mean == pytest.approx(0.6) and a.std == pytest.approx(0.1) and a.n_seeds == 3
    assert b.best_of_3 == 0.9 and b.n_seeds == 1 and b.std is None


def test_missing_cells_are_missing_not_zero(tmp_path):
    expected = [TrialKey("a", "digits", 1.0, 0), TrialKey("c", "digits", 0.1, 0)]
    summaries = summarize([_row("a", 0, 0.5)], expected=expected)
    missing = [s for s in summaries if s.backbone == "c"]
    assert missing and missing[0].best_of_3 is None and missing[0].n_seeds == 0
    assert "| digits | 0.1 | c | missing | missing | 0 |" in markdown_table(summaries)
    paths = write_report(summaries, tmp_path)
    with open(paths["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["backbone", "dataset", "domain", "fraction", "best_of_3", "mean", "std", "n_seeds"]
    c_row = [r for r in rows if r["backbone"] == "c"][0]
    assert c_row["best_of_3"] == "" and c_row["n_seeds"] == "0"
    assert "shown as missing" in paths["markdown"].read_text()
