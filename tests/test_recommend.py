"""The recommendation's logic: ranking, the verdict within seed noise, the paper's prior, learning curves.

Trial results are written to a real MLflow store the way trials log them and read back by the same
``build_recommendation`` a sweep calls.
"""

import csv
import json

import pytest

from rayexp import tracking
from rayexp.grid import TrialKey
from rayexp.priors import PRIORS, prior_for
from rayexp.recommend import build_recommendation, recommend


def _row(backbone, seed, acc, fraction=1.0, **extra):
    return {
        "key": f"{backbone}/mine/{fraction}/{seed}",
        "backbone": backbone,
        "dataset": "mine",
        "domain": "medical",
        "fraction": fraction,
        "seed": seed,
        "status": "FINISHED",
        "best_test_acc": acc,
        "weights": "IMAGENET1K_V1",
        "train_seconds": 360.0,
        "train_images_per_s": 900.0,
        "inference_images_per_s": 3000.0,
        "stopped_by": None,
        **extra,
    }


def _verdict(rows, backbones=()):
    rec = recommend(rows, "mine", "medical", [TrialKey(b, "mine", 1.0, 0) for b in backbones])
    return rec.ranked, rec.verdict


def test_ranking_is_the_reports_and_the_verdict_calls_a_tie_within_noise():
    rows = [_row("regnet_y_3_2gf", s, a, test_rows=600) for s, a in enumerate((0.90, 0.92, 0.91))]
    rows += [
        _row("convnext_tiny", s, a, test_rows=600) for s, a in enumerate((0.89, 0.93, 0.905))
    ]  # higher best, lower mean
    rows += [_row("swin_t", s, a, test_rows=600) for s, a in enumerate((0.70, 0.72, 0.71))]
    ranked, text = _verdict(rows, ["regnet_y_3_2gf", "convnext_tiny", "swin_t", "resnet50"])
    # Ranked by the mean over seeds, as every verdict is: convnext_tiny's lucky 93% seed does not put it first.
    assert [r.backbone for r in ranked] == ["regnet_y_3_2gf", "convnext_tiny", "swin_t", "resnet50"]
    assert [r.rank for r in ranked] == [1.0, 2.0, 3.0, None] and ranked[3].n_seeds == 0
    assert (
        ranked[1].mean == pytest.approx(0.9083333)
        and ranked[0].device_hours == pytest.approx(0.3)
        and ranked[0].params_m > 15
    )
    assert text.startswith("**regnet_y_3_2gf** leads on mine") and "summary rule" in text and "Use " not in text
    assert "it cannot be told apart from convnext_tiny" in text and "To settle it: 6 seeds would bring that to" in text

    clear = [_row("regnet_y_3_2gf", s, a, test_rows=600) for s, a in enumerate((0.90, 0.91, 0.905))]
    clear += [_row("swin_t", s, 0.70 + s / 100, test_rows=600) for s in range(3)]
    _, text = _verdict(clear)
    assert text.startswith("Use **regnet_y_3_2gf** for mine") and "a clear lead" in text and "tied" not in text
    _, one_seed = _verdict([_row("a_net", 0, 0.8), _row("b_net", 0, 0.7)])
    assert "seed noise is unknown" in one_seed and "Use " not in one_seed


def test_prior_sits_beside_the_measured_ranking():
    rows = [_row("convnext_tiny", s, 0.95) for s in range(2)] + [_row("wavemix_192_16", s, 0.90) for s in range(2)]
    rec = recommend(rows, "mine", "medical")
    assert "the medical domain" in rec.prior[0] and "cautioned against convnext_tiny" in rec.prior[0]
    assert "the paper cautioned against convnext_tiny, yet it did well on this data" in rec.prior[-1]
    assert "the paper also favours wavemix_192_16" in rec.prior[-1]
    general, specific = prior_for("retail shelves")
    assert not specific and "convnext_tiny" in general.favoured
    assert set(PRIORS) >= {"natural", "medical", "astronomy", "remote sensing", "plant", "texture", "surface defect"}


def test_learning_curves_and_files_from_a_real_mlflow_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    accs = {
        ("shufflenet_v2_x2_0", 0.1): 0.60,
        ("shufflenet_v2_x2_0", 1.0): 0.90,
        ("regnet_y_3_2gf", 0.1): 0.55,
        ("regnet_y_3_2gf", 1.0): 0.93,
    }
    expected = [TrialKey(b, "mine", f, s) for (b, f) in accs for s in (0, 1)] + [TrialKey("swin_t", "mine", 1.0, 0)]
    for key in expected[:-1]:
        tags = {
            "backbone": key.backbone,
            "dataset": "mine",
            "domain": "plant",
            "fraction": repr(key.fraction),
            "seed": str(key.seed),
        }
        run = tracking.TrialRun.open(uri, "my-data-mine", str(key), tags, {"weights": "IMAGENET1K_V1"})
        run.log_metrics({"test_images_per_s": 2500.0}, step=1)
        run.finish(
            {
                "best_test_acc": accs[(key.backbone, key.fraction)] + key.seed / 100,
                "train_seconds": 60.0,
                "epochs_run": 10,
            }
        )
    paths = build_recommendation(
        uri,
        "my-data-mine",
        "mine",
        "plant",
        tmp_path / "out",
        expected=expected,
        check={"lines": ["data check of mine"]},
    )

    with open(paths["ranking"]) as handle:
        ranking = list(csv.DictReader(handle))
    assert [r["backbone"] for r in ranking] == ["regnet_y_3_2gf", "shufflenet_v2_x2_0", "swin_t"]
    assert (
        ranking[0]["rank"] == "1" and ranking[2]["rank"] == "" and float(ranking[0]["inference_images_per_s"]) == 2500.0
    )
    with open(paths["learning_curves"]) as handle:
        curves = {(r["backbone"], float(r["fraction"])): float(r["mean"]) for r in csv.DictReader(handle) if r["mean"]}
    assert curves[("shufflenet_v2_x2_0", 0.1)] == pytest.approx(0.605) and curves[
        ("regnet_y_3_2gf", 1.0)
    ] == pytest.approx(0.935)
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads(paths["json"].read_text())
    assert rec["not_run"] == ["swin_t/mine/1.0/0"] and rec["fraction"] == 1.0
    assert (
        "Accuracy vs training-set size" in paths["markdown"].read_text()
        and "data check of mine" in paths["html"].read_text()
    )
