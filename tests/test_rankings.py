"""The rules behind every ranking (:mod:`rayexp.results`): ties, the paired verdict, chance level, incomplete
cells and selection=val; alone, and through a real MLflow store read back by the real report and
recommendation builders, which must agree because they apply the same rules."""

import csv
import json

import numpy as np
import pytest

from rayexp import tracking
from rayexp.errors import RayexpError
from rayexp.grid import TrialKey
from rayexp.inference import spearman
from rayexp.recommend import build_recommendation, recommend
from rayexp.report import (
    build_report,
    domain_tables,
    header_lines,
    imagenet_rank_correlation,
    judgements,
    recommendations,
)
from rayexp.results import (
    Predictions,
    average_ranks,
    compare,
    dataset_ranks,
    domain_rankings,
    is_above_chance,
    judge,
    places,
    scored,
    summarize,
)

TIED = ["convnext_tiny", "densenet161", "efficientnet_b4", "regnet_y_3_2gf", "swin_t"]


def _row(backbone, seed, acc, dataset="neu", fraction=1.0, **extra):
    return {
        "key": f"{backbone}/{dataset}/{fraction}/{seed}",
        "backbone": backbone,
        "dataset": dataset,
        "domain": "surface defect",
        "fraction": fraction,
        "seed": seed,
        "status": "FINISHED",
        "best_test_acc": acc,
        "weights": "IMAGENET1K_V1",
        "run_id": f"{backbone}-{dataset}-{fraction}-{seed}",
        "test_rows": 600,
        "num_classes": 6,
        "test_majority_rate": 1 / 6,
        **extra,
    }


def test_five_tied_scores_share_their_rank_all_are_marked_and_none_wins_by_name():
    rows = [_row(b, s, 1.0) for b in TIED for s in range(3)]
    rows += [_row("resnet50", s, 0.99) for s in range(3)] + [_row("vit_b_16", s, 0.985) for s in range(3)]
    summaries = summarize(rows)

    assert average_ranks({b: 1.0 for b in TIED} | {"resnet50": 0.99}) == {**{b: 3.0 for b in TIED}, "resnet50": 6.0}
    assert set(places({b: 1.0 for b in TIED} | {"resnet50": 0.99}).values()) == {1, 6}
    assert dataset_ranks(summaries, 1.0)["neu"] == {**{b: 3.0 for b in TIED}, "resnet50": 6.0, "vit_b_16": 7.0}
    # Top-three marks take in every tied cell, and nothing else.
    (table,) = domain_tables(summaries)
    neu = table["datasets"].index("neu")
    marked = sorted(b for b, row in table["rows"] if row[neu][1] is not None and row[neu][1] <= 3)
    assert marked == TIED
    # The domain's answer names all of them; no one of them wins by its place in the alphabet.
    (ranking,) = domain_rankings(summaries, 1.0)
    assert ranking.leaders == TIED
    lines = recommendations(summaries, judgements(summaries, rows, None))
    assert lines[0].startswith("**surface defect**: tie: " + ", ".join(TIED) + " — mean rank 3.0")
    assert any(line.startswith("neu at 1.0: tie: " + ", ".join(TIED)) for line in lines)
    assert not any("**convnext_tiny**" in line for line in lines)
    points = {name: rank for _, rank, name in imagenet_rank_correlation(summaries, 1.0)["points"]}
    assert points["convnext_tiny"] == points["densenet161"] == 3.0


def _correct(n, wrong):
    out = np.ones(n, dtype=bool)
    out[list(wrong)] = False
    return out


def _predictions(correct, labels):
    ids = tuple(f"img{i:04d}" for i in range(len(correct)))
    return Predictions(ids, labels, np.where(correct, labels, (labels + 1) % 6))


def test_the_paired_verdict_sees_a_clear_lead_and_a_true_tie_that_seed_spread_misses():
    n, labels = 420, np.arange(420) % 6
    planted = {}
    # A clear lead: b is wrong on everything a is wrong on, and on 25 images more, in every seed.
    for s in range(3):
        a_wrong = set(range(s, 40 + s))
        planted[f"a-{s}"] = _predictions(_correct(n, a_wrong), labels)
        planted[f"b-{s}"] = _predictions(_correct(n, a_wrong | set(range(100, 125))), labels)
    # A true tie: c and d disagree on many images; c is right on 4 more of them in every seed, and the seeds agree
    # so closely that the old rule (margin larger than the seeds' spread) called it a clear lead.
    for s in range(3):
        planted[f"c-{s}"] = _predictions(_correct(n, set(range(200, 226)) | {s}), labels)
        planted[f"d-{s}"] = _predictions(_correct(n, set(range(300, 330)) | {s}), labels)
    rows = []
    for name in "abcd":
        for s in range(3):
            p = planted[f"{name}-{s}"]
            rows.append(
                {**_row(name, s, float(np.mean(p.labels == p.predictions))), "run_id": f"{name}-{s}", "test_rows": n}
            )
    summaries = {s.backbone: s for s in summarize(rows)}

    def load(row):
        return planted.get(row["run_id"])

    clear = compare(summaries["a"], summaries["b"], rows, load)
    assert clear.outcome == "clear" and clear.rule == "paired t" and clear.low > 0 and clear.p < 0.025
    assert clear.difference == pytest.approx(25 / n) and "the same 420 test images x 3 seeds" in clear.text()
    tie = compare(summaries["c"], summaries["d"], rows, load)
    assert tie.outcome == "tied" and tie.low < 0 < tie.high and tie.difference == pytest.approx(4 / n) and tie.p > 0.025
    c, d = summaries["c"], summaries["d"]
    assert c.best_of_3 - d.best_of_3 > max(
        c.std, d.std
    )  # what the old rule called "a margin larger than the seeds' spread"
    # Deterministic: the same inputs give the same interval.
    assert compare(summaries["c"], summaries["d"], rows, load) == tie
    # Without predictions, the summary rule; and it says so.
    fallback = compare(summaries["c"], summaries["d"], rows, None)
    assert fallback.rule == "summary rule" and fallback.outcome == "tied"
    partial = compare(summaries["a"], summaries["b"], rows, lambda row: None if row["run_id"] == "b-2" else load(row))
    assert partial.rule == "summary rule" and "no per-image test predictions for every seed" in partial.note
    stale = compare(
        summaries["a"], summaries["b"], [{**r, "best_test_acc": 0.5} if r["run_id"] == "a-1" else r for r in rows], load
    )
    assert stale.rule == "summary rule" and "a/neu/1.0/1 do not score its recorded accuracy" in stale.note
    relabelled = Predictions(planted["b-0"].ids, (planted["b-0"].labels + 1) % 6, (planted["b-0"].predictions + 1) % 6)
    assert (
        "disagree on the test images' labels"
        in compare(
            summaries["a"], summaries["b"], rows, lambda row: relabelled if row["run_id"] == "b-0" else load(row)
        ).note
    )
    # A file with an image twice, or no rows at all, is named and never compared image by image.
    doubled = Predictions(
        planted["b-1"].ids[:-1] + planted["b-1"].ids[:1], planted["b-1"].labels, planted["b-1"].predictions
    )
    found = compare(summaries["a"], summaries["b"], rows, lambda row: doubled if row["run_id"] == "b-1" else load(row))
    assert found.rule == "summary rule" and "the predictions of b/neu/1.0/1 repeat image ids" in found.note
    empty = Predictions((), np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    found = compare(summaries["a"], summaries["b"], rows, lambda row: empty if row["run_id"] == "a-0" else load(row))
    assert "the predictions of a/neu/1.0/0 hold no rows" in found.note
    other_images = compare(
        summaries["a"],
        summaries["b"],
        rows,
        lambda row: Predictions(("x",), np.zeros(1), np.zeros(1)) if row["run_id"] == "b-0" else load(row),
    )
    assert "different test images" in other_images.note


def _log_trial(uri, experiment, row, predictions=None, parents=None, tags=()):
    key = TrialKey(row["backbone"], row["dataset"], row["fraction"], row["seed"])
    run_tags = {
        "backbone": key.backbone,
        "dataset": key.dataset,
        "domain": row["domain"],
        "fraction": repr(key.fraction),
        "seed": str(key.seed),
        "selection": row.get("selection", "test"),
        "data_fingerprint": "sha256:d",
        "protocol_fingerprint": "sha256:p",
        **dict(tags),
    }
    params = {
        "weights": "IMAGENET1K_V1",
        "test_rows": row["test_rows"],
        "num_classes": row["num_classes"],
        "test_majority_rate": row["test_majority_rate"],
    }
    parent = (parents or {}).get(tracking.cell_name(key.backbone, key.dataset, key.fraction))
    run = tracking.TrialRun.open(uri, experiment, str(key), run_tags, params, parent_run_id=parent)
    if predictions is not None:
        lines = ["id,label,prediction"] + [
            f"{i},{y},{p}" for i, y, p in zip(predictions.ids, predictions.labels, predictions.predictions)
        ]
        run.log_text("\n".join(lines) + "\n", tracking.PREDICTIONS_ARTIFACT)
    run.finish(
        {
            "best_test_acc": row["best_test_acc"],
            "train_seconds": 10.0,
            **({"best_val_acc": row["best_val_acc"]} if "best_val_acc" in row else {}),
        }
    )


def test_report_and_recommendation_give_one_verdict_from_predictions_in_mlflow(tmp_path):
    uri, n, labels = f"sqlite:///{tmp_path / 'm.db'}", 420, np.arange(420) % 6
    for s in range(3):
        lead = _predictions(_correct(n, range(s, 40 + s)), labels)
        behind = _predictions(_correct(n, set(range(s, 40 + s)) | set(range(100, 125))), labels)
        for backbone, p in (("resnet50", lead), ("swin_t", behind)):
            _log_trial(uri, "exp", _row(backbone, s, float(np.mean(p.labels == p.predictions)), test_rows=n), p)
    paths = build_report(uri, "exp", tmp_path / "report", log_to_mlflow=False)
    text = paths["report_md"].read_text()
    assert (
        "neu at 1.0: **resnet50**" in text
        and "a clear lead" in text
        and "paired t over the same 420 test images x 3 seeds" in text
    )
    assert "Verdicts rank by the mean over seeds" in text and "Benjamini-Hochberg" in text  # the rule, stated
    assert (
        "**surface defect**: use **resnet50** — mean rank 1.0 over 1 dataset(s) at 1.0, by the mean over seeds; "
        "next swin_t (2.0); a clear lead on 1 of 1" in text
    )
    rec = json.loads(
        build_recommendation(uri, "exp", "neu", "surface defect", tmp_path / "rec", log_to_mlflow=False)[
            "json"
        ].read_text()
    )
    assert rec["judgement"]["kind"] == "clear" and rec["verdict"].startswith("Use **resnet50** for neu")
    assert rec["judgement"]["verdict"]["rule"] == "paired t"


def test_a_chance_level_run_gets_no_recommendation(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    for backbone in ("resnet50", "swin_t"):
        for s in range(2):
            row = _row(backbone, s, 100 / 300, dataset="mine", test_rows=300, num_classes=3, test_majority_rate=1 / 3)
            _log_trial(uri, "my-data-mine", {**row, "domain": "medical"})
    rec = json.loads(
        build_recommendation(uri, "my-data-mine", "mine", "medical", tmp_path / "rec", log_to_mlflow=False)[
            "json"
        ].read_text()
    )
    assert (
        rec["verdict"].startswith("No backbone learned on mine")
        and "Use " not in rec["verdict"]
        and "1/3 = 33.33%" in rec["verdict"]
    )
    assert rec["judgement"]["kind"] == "chance"
    paths = build_report(uri, "my-data-mine", tmp_path / "report", log_to_mlflow=False)
    text = paths["report_md"].read_text()
    assert (
        "no backbone learned on mine at 1.0" in text
        and "**medical**: no recommendation" in text
        and "use **" not in text
    )
    assert "| *chance* | 33.33 |" in text
    with open(paths["csv"]) as handle:
        assert {r["above_chance"] for r in csv.DictReader(handle)} == {"False"}
    # The demo's case: about 12% on 10 classes over 178 test images is not above chance; 30% is.
    assert is_above_chance(0.12, 178, 0.1) is False and is_above_chance(0.30, 178, 0.1) is True
    # Imbalanced: 80% is chance when 80% of the test images are one class.
    assert is_above_chance(0.80, 500, 0.80) is False and is_above_chance(0.86, 500, 0.80) is True
    assert is_above_chance(0.5, None, 0.1) is None


def test_incomplete_cells_are_marked_in_every_table(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    cells = [("resnet50", "neu", 1.0), ("swin_t", "neu", 1.0)]
    parents = tracking.ensure_cell_runs(
        uri, "exp", cells, {"neu": "surface defect"}, seeds={c: [0, 1, 2] for c in cells}
    )
    for s, acc in enumerate((0.90, 0.91, 0.92)):
        _log_trial(uri, "exp", _row("resnet50", s, acc), parents=parents)
    _log_trial(uri, "exp", _row("swin_t", 0, 0.95), parents=parents)
    _log_trial(uri, "exp", _row("swin_t", 1, 0.60), parents=parents, tags={"stopped_by": "asha"})
    assert tracking.fetch_cells(uri, "exp")[0][4] == (0, 1, 2)
    paths = build_report(uri, "exp", tmp_path / "report", log_to_mlflow=False)
    with open(paths["csv"]) as handle:
        summary = {r["backbone"]: r for r in csv.DictReader(handle)}
    assert (
        summary["swin_t"]["n_seeds"] == "2"
        and summary["swin_t"]["n_planned"] == "3"
        and summary["swin_t"]["n_stopped"] == "1"
    )
    assert summary["swin_t"]["complete"] == "False" and summary["resnet50"]["complete"] == "True"
    with open(paths["ranks"]) as handle:
        ranks = {r["backbone"]: r for r in csv.DictReader(handle)}
    assert list(next(iter(ranks.values())))[:9] == [
        "domain",
        "dataset",
        "fraction",
        "backbone",
        "rank",
        "best_of_3",
        "mean",
        "std",
        "n_seeds",
    ]
    assert ranks["swin_t"]["rank"] == "1" and ranks["swin_t"]["complete"] == "False"
    text = paths["report_md"].read_text()
    assert "95.00†" in text and "1 of 2 cell(s) are incomplete" in text
    assert "Incomplete: swin_t 2/3 seeds, 1 stopped early" in text and "1 incomplete cell(s)" in text
    # First on ranks (by the mean over seeds: swin_t's lucky 95% seed leads the paper's best of seeds) but clearly
    # ahead nowhere: the domain gets no "use".
    assert (
        "**surface defect**: no clear leader — resnet50 ranks first" in text and "clear on none of 1 dataset(s)" in text
    )
    assert "use **" not in text
    # A later sweep planning more seeds widens the cell's planned seeds.
    tracking.ensure_cell_runs(uri, "exp", cells[:1], {"neu": "surface defect"}, seeds={cells[0]: [3]})
    assert {c[0]: c[4] for c in tracking.fetch_cells(uri, "exp")}["resnet50"] == (0, 1, 2, 3)


def test_selection_val_scores_the_best_validation_seed_and_the_header_says_so():
    rows = [
        _row("resnet50", s, test, selection="val", best_val_acc=val)
        for s, (val, test) in enumerate(((0.90, 0.85), (0.95, 0.80), (0.80, 0.99)))
    ]
    rows.append({**_row("resnet50", 3, 0.70, selection="val", best_val_acc=0.5), "capped": "AdamW"})
    (cell,) = summarize(rows)
    assert cell.best_of_3 == 0.80 and cell.selection == "val"  # not 0.99: the test split does not pick the seed
    header = header_lines([cell], rows)
    assert (
        header[0].startswith("Model selection: **val**") and "the seed with the best validation accuracy" in header[1]
    )
    assert any("1 trial(s) hit the --max-epochs cap" in line for line in header)


def test_a_dataset_where_nothing_learned_is_left_out_of_the_domain_ranking():
    rows = [_row(b, s, acc) for s in range(3) for b, acc in (("resnet50", 0.9), ("swin_t", 0.8))]
    rows += [_row(b, s, 0.17, dataset="gc10") for s in range(3) for b in ("resnet50", "swin_t")]
    summaries = summarize(rows)
    (ranking,) = domain_rankings(summaries, 1.0)
    assert ranking.at_chance == ["gc10"] and ranking.rows[0][2] == 1
    assert judge(summaries, rows, "gc10", 1.0).kind == "chance"
    rec = recommend([{**r, "dataset": "gc10"} for r in rows if r["dataset"] == "gc10"], "gc10", "surface defect")
    assert rec.verdict.startswith("No backbone learned on gc10")


def test_a_seed_the_budget_never_started_marks_the_recommendations_cell_incomplete():
    rows = [_row("resnet50", s, 0.9, dataset="mine") for s in range(2)] + [_row("swin_t", 0, 0.95, dataset="mine")]
    expected = [TrialKey(b, "mine", 1.0, s) for b in ("resnet50", "swin_t") for s in range(2)]
    rec = recommend(rows, "mine", "medical", expected)
    cells = {r.backbone: r.cell for r in rec.ranked}
    assert cells["swin_t"].n_planned == 2 and not cells["swin_t"].complete and cells["resnet50"].complete
    assert "Incomplete: swin_t 1/2 seeds" in rec.verdict and rec.not_run == ["swin_t/mine/1.0/1"]


def test_the_leader_is_the_best_mean_not_the_luckiest_seed():
    # The audit's constructed case: by best of seeds "lucky" led and was called a clear lead over "spiky", while
    # "steady" was 1.7 points better on the mean the verdict judged.
    accs = {
        "lucky": (0.860, 0.880, 0.939),
        "spiky": (0.830, 0.866, 0.920),
        "steady": (0.908, 0.911, 0.914),
    }
    rows = [_row(b, s, a, test_rows=5000) for b, seeds in accs.items() for s, a in enumerate(seeds)]
    summaries = summarize(rows)
    (found,) = judgements(summaries, rows, None)
    assert found.leaders[0].backbone == "steady" and found.runner_up.backbone == "lucky"
    assert [v.second for v in found.comparisons] == ["lucky", "spiky"] and found.kind != "clear"
    assert found.verdict.difference > 0  # judged on what it was chosen by
    assert "lucky" in found.contenders and "steady" in found.contenders
    rec = recommend(rows, "neu", "surface defect")
    assert [r.backbone for r in rec.ranked] == ["steady", "lucky", "spiky"] and "Use **lucky**" not in rec.verdict
    # The paper's table keeps best of seeds: lucky first there.
    assert [s.backbone for s in scored(summaries, "neu", 1.0)][0] == "lucky"


def test_table1_ranks_every_backbone_on_every_dataset_and_counts_them():
    # swin_t failed on neu2: it may not rank first over the datasets it has; it is ranked last where it has no score.
    rows = [_row("swin_t", s, 0.95) for s in range(3)]
    rows += [_row(b, s, acc, dataset=d) for d in ("neu", "neu2") for b, acc in (("resnet50", 0.9),) for s in range(3)]
    rows += [{**_row("swin_t", 0, None, dataset="neu2"), "status": "FAILED"}]
    summaries = summarize(rows)
    (ranking,) = domain_rankings(summaries, 1.0)
    assert ranking.datasets == 2 and ranking.missing == ["swin_t on neu2"]
    assert ranking.rows == [("resnet50", 1.5, 2), ("swin_t", 1.5, 1)]  # not swin_t 1.0 over its one dataset
    assert ranking.leaders == ["resnet50", "swin_t"]
    (table,) = domain_tables(summaries)
    text = recommendations(summaries, judgements(summaries, rows, None))[0]
    assert "1 cell(s) with no score ranked last: swin_t on neu2" in text
    assert table["datasets"] == ["neu", "neu2"]


def test_the_imagenet_correlation_leaves_out_the_datasets_table1_leaves_out():
    backbones = ["resnet50", "convnext_tiny", "swin_t", "densenet161", "mobilenet_v3_large"]
    rows = [_row(b, s, 0.5 + 0.1 * i) for i, b in enumerate(backbones) for s in range(3)]
    # gc10: everyone at chance, in the reverse order: it would drag the correlation if it counted.
    rows += [_row(b, s, 0.16 + 0.001 * (5 - i), dataset="gc10") for i, b in enumerate(backbones) for s in range(3)]
    found = imagenet_rank_correlation(summarize(rows), 1.0)
    assert found["at_chance"] == ["gc10"] and found["datasets"] == 1
    only_neu = imagenet_rank_correlation(summarize([r for r in rows if r["dataset"] == "neu"]), 1.0)
    assert found["rho"] == only_neu["rho"] and found["p"] == only_neu["p"]
    assert found["p"] == spearman([p[0] for p in found["points"]], [p[1] for p in found["points"]]).p


def test_a_cell_of_mixed_or_incomplete_selection_is_refused():
    mixed = [_row("resnet50", 0, 0.9, selection="val", best_val_acc=0.8), _row("resnet50", 1, 0.95, selection="test")]
    with pytest.raises(RayexpError, match="selected by different rules"):
        summarize(mixed)
    # selection=val with one seed missing its validation accuracy: once silently scored by the best test seed.
    partial = [_row("resnet50", 0, 0.9, selection="val", best_val_acc=0.8), _row("resnet50", 1, 0.99, selection="val")]
    with pytest.raises(RayexpError, match="resnet50/neu/1.0/1 logged no best_val_acc"):
        summarize(partial)


def test_a_lead_too_small_to_resolve_says_how_small_and_what_would_settle_it():
    rows = [_row("a_net", s, 0.90 + 0.01 * s, test_rows=359) for s in range(3)]
    rows += [_row("b_net", s, 0.895 + 0.01 * s, test_rows=359) for s in range(3)]
    (found,) = judgements(summarize(rows), rows, None)
    assert found.kind == "tied" and found.contenders == ("a_net", "b_net")
    assert found.noise_floor().startswith("with 3 seeds and 359 test images, a lead under ~")
    assert "6 seeds would bring that to ~" in found.settle_text()
    rec = recommend(rows, "neu", "surface defect")
    assert "a lead under ~" in rec.verdict and "To settle it: 6 seeds" in rec.verdict
