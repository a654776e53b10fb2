import csv

import pytest

from rayexp.grid import TrialKey
from rayexp.report import markdown_table, top_mark, write_report
from rayexp.results import summarize


def _row(backbone, seed, acc, status="FINISHED", fraction=1.0):
    return {
        "backbone": backbone,
        "dataset": "digits",
        "domain": "handwriting",
        "fraction": fraction,
        "seed": seed,
        "status": status,
        "best_test_acc": acc,
        "weights": "random",
    }


def test_best_of_three_mean_and_std():
    rows = [
        _row("a", 0, 0.5),
        _row("a", 1, 0.7),
        _row("a", 2, 0.6),
        _row("b", 0, 0.9),
        _row("b", 1, None, status="FAILED"),
    ]
    summaries = {s.backbone: s for s in summarize(rows)}
    a, b = summaries["a"], summaries["b"]
    assert a.best_of_3 == 0.7 and a.mean == pytest.approx(0.6) and a.std == pytest.approx(0.1) and a.n_seeds == 3
    assert b.best_of_3 == 0.9 and b.n_seeds == 1 and b.std is None


def test_missing_cells_are_missing_not_zero(tmp_path):
    expected = [TrialKey("a", "digits", 1.0, 0), TrialKey("c", "digits", 0.1, 0)]
    summaries = summarize([_row("a", 0, 0.5)], expected=expected)
    missing = [s for s in summaries if s.backbone == "c"]
    assert missing and missing[0].best_of_3 is None and missing[0].n_seeds == 0
    assert "| digits | 0.1 | c | missing | missing | 0/1 |" in markdown_table(summaries)
    paths = write_report(summaries, tmp_path)
    with open(paths["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "backbone",
        "dataset",
        "domain",
        "fraction",
        "best_of_3",
        "mean",
        "std",
        "n_seeds",
        "n_planned",
        "n_stopped",
        "n_capped",
        "complete",
        "chance",
        "above_chance",
    ]
    c_row = [r for r in rows if r["backbone"] == "c"][0]
    assert (
        c_row["best_of_3"] == ""
        and c_row["n_seeds"] == "0"
        and c_row["n_planned"] == "1"
        and c_row["complete"] == "False"
    )
    assert "shown as missing" in paths["markdown"].read_text()


def _marked(backbone, seed, acc, data="d1", protocol="p1", start=0, dataset="digits"):
    return {
        **_row(backbone, seed, acc),
        "dataset": dataset,
        "data_fingerprint": f"sha256:{data}",
        "protocol_fingerprint": f"sha256:{protocol}",
        "start_time": start,
        "run_id": f"{backbone}{seed}{start}",
    }


def test_results_of_other_data_or_protocol_are_left_out_and_said():
    from rayexp.results import current_results

    rows = [
        _marked("a", 0, 0.50, data="old", start=1),
        _marked("a", 1, 0.99, data="old", start=2),  # before prepare --force
        _marked("a", 2, 0.70, data="new", start=3),
        _marked("b", 0, 0.60, data="new", start=4),
        _marked("b", 1, 0.95, protocol="p0", data="new", start=0),  # another protocol, older
        _marked("c", 0, 0.80, dataset="dtd", data="x", start=5),
        {**_row("d", 0, 0.9)},  # an older rayexp's run, no fingerprint
        {**_row("e", 0, None, status="FAILED")},
    ]
    kept, notes = current_results(rows)
    assert sorted((r["backbone"], r["seed"]) for r in kept) == [("a", 2), ("b", 0), ("c", 0), ("e", 0)]
    assert any("2 finished run(s) left out: trained on an earlier version of digits" in n for n in notes)
    assert any("1 finished run(s) left out: trained with another protocol" in n for n in notes)
    assert any("1 finished run(s) left out: they record no fingerprint" in n for n in notes)
    # The best of three is not the stale 0.99.
    assert {s.backbone: s.best_of_3 for s in summarize(kept)}["a"] == 0.7


def test_results_without_any_fingerprint_are_kept_but_said():
    from rayexp.results import current_results

    rows = [_row("a", 0, 0.5), _row("a", 1, 0.6)]
    kept, notes = current_results(rows)
    assert kept == rows and "record no data or protocol fingerprint" in notes[0]


def test_top_three_marks_only_the_leader_with_fewer_than_four_backbones():
    assert [top_mark(p, 11) for p in (1, 2, 3, 4, None)] == [1, 2, 3, None, None]
    assert [top_mark(p, 3) for p in (1, 2, 3)] == [1, None, None]  # else every cell of the dataset is marked
    assert [top_mark(p, 2) for p in (1, 1)] == [1, 1]  # tied for first: both are the leader
