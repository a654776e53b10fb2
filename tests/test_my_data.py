"""``sweeps/my_data.py`` end to end: a user's image folder -> data check -> shards -> sweep -> recommendation.

Real files in the layouts users have (class folders; train/ and test/ folders), a real local Ray
instance, a real MLflow store, random-init weights (offline), recorded as such.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayexp import tracking
from rayexp.cli import SweepDefaults
from rayexp.my_data import dataset_name, main, ordered_keys
from rayexp.settings import SweepSettings
from rayexp.training import TrainConfig

DEFAULTS = SweepDefaults(
    description="my data test",
    settings=SweepSettings(
        experiment="",
        backbones=("shufflenet_v2_x2_0", "mobilenet_v3_large"),
        fractions=(1.0,),
        seeds=(0, 1),
        train=TrainConfig(max_epochs=2, patience=2, selection="val"),
        batch_size=32,
    ),
)
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}


def separable_folder(root: Path, per_class: int = 40, size: int = 32, seed: int = 0) -> Path:
    """``<class>/`` folders of visually separable images: a class colour, noise and a random bright bar."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = np.clip(np.array(colour) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            r = rng.integers(0, size - 8)
            image[r : r + 4, :, :] = 255
            Image.fromarray(image).save(root / name / f"{name}_{i:03d}.png")
    return root


def digits_folder(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """scikit-learn's bundled digits as train/<digit>/ and test/<digit>/ PNG folders."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        for i in rows:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    return root


def plant_problems(root: Path) -> dict[str, str]:
    """A training image copied into test/, an unreadable file, a class with one training image."""
    original = sorted((root / "train" / "3").glob("*.png"))[0]
    shutil.copy(original, root / "test" / "3" / "copy_of_train.png")
    (root / "train" / "5" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    for split in ("train", "test"):
        (root / split / "x").mkdir()
        shutil.copy(sorted((root / split / "7").glob("*.png"))[0], root / split / "x" / f"only_{split}.png")
    return {
        "original": f"train/3/{original.name}",
        "copy": "test/3/copy_of_train.png",
        "broken": "train/5/broken.png",
        "tiny": "x",
    }


def _argv(tmp_path: Path, source: Path, *extra: str) -> list[str]:
    return [
        "--source",
        str(source),
        "--data-dir",
        str(tmp_path / "data"),
        "--storage",
        str(tmp_path / "storage"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--out",
        str(tmp_path / "out"),
        "--input-size",
        "32",
        "32",
        "--allow-random-init",
        "--no-dualopt",
        *extra,
    ]


def test_names_and_seed_major_order():
    assert dataset_name("/data/Skin Lesions (v2)/") == "skin_lesions_v2"
    assert dataset_name("/data/melanoma/labels.csv") == "melanoma"
    keys = ordered_keys(["a_net", "b_net"], "d", [0.1, 1.0], [0, 1])
    assert [str(k) for k in keys[:4]] == ["a_net/d/1.0/0", "b_net/d/1.0/0", "a_net/d/0.1/0", "b_net/d/0.1/0"]


def test_planted_problems_stop_the_run_before_anything_trains(tmp_path, capsys):
    planted = plant_problems(digits_folder(tmp_path / "digits_folder"))
    assert main(DEFAULTS, _argv(tmp_path, tmp_path / "digits_folder")) == 2
    captured = capsys.readouterr()
    assert "serious problem(s)" in captured.err and "--accept-warnings" in captured.err
    report = (tmp_path / "out" / "data_check.txt").read_text()
    for kind in ("unreadable", "duplicate_across_splits", "class_too_small", "small_images"):
        assert f"[{kind}]" in report, kind
    assert planted["copy"] in report and planted["original"] in report and planted["broken"] in report
    assert "class 'x' has 1 training and 1 test images" in report
    check = json.loads((tmp_path / "out" / "data_check.json").read_text())
    assert check["classes"] == [str(d) for d in range(10)] + ["x"]
    assert not (tmp_path / "data").exists() and not (tmp_path / "storage").exists()  # nothing prepared, nothing started


def test_unknown_backbone_and_catalog_name_fail_fast(tmp_path, capsys):
    separable_folder(tmp_path / "colours")
    assert main(DEFAULTS, _argv(tmp_path, tmp_path / "colours", "--backbones", "resnet51")) == 2
    assert "unknown backbone 'resnet51'" in capsys.readouterr().err
    assert main(DEFAULTS, _argv(tmp_path, tmp_path / "colours", "--name", "cifar10")) == 2
    assert "one of the paper's datasets" in capsys.readouterr().err


def test_a_second_run_with_the_same_name_is_refused_before_it_checks_or_prepares(tmp_path, capsys):
    """Two my_data.py runs of one --name once broke each other: the second prepared the dataset again under the
    first's trials and wrote over its report. The lock is now taken before anything is read or written."""
    import os

    source = separable_folder(tmp_path / "colours", per_class=20)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.acquire_sweep_lock(uri, "my-data-colours"):  # what the first run holds while it works
        assert main(DEFAULTS, _argv(tmp_path, source)) == 2
    err = capsys.readouterr().err
    assert f"experiment 'my-data-colours' is being swept by pid {os.getpid()}" in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()  # nothing checked or prepared


@pytest.mark.slow
def test_separable_folder_end_to_end_ranks_the_backbones(ray_local, tmp_path, capsys, monkeypatch):
    source = separable_folder(tmp_path / "colours")
    assert main(DEFAULTS, _argv(tmp_path, source, "--domain", "natural")) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "# Which backbone for colours?" in out
    # At chance, no "winner" is registered, and the best weights kept for it are gone.
    assert "no model registered: no backbone learned on colours" in out and "# Use the winner" not in out
    assert not list((tmp_path / "storage").rglob("best_weights.pt"))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracking.fetch_trial_results(uri, "my-data-colours")
    assert sorted(r["key"] for r in runs) == sorted(
        f"{b}/colours/1.0/{s}" for b in DEFAULTS.settings.backbones for s in (0, 1)
    )
    assert all(r["status"] == "FINISHED" and r["weights"] == "random" and r["inference_images_per_s"] > 0 for r in runs)

    with open(tmp_path / "out" / "ranking.csv") as handle:
        ranking = list(csv.DictReader(handle))
    assert [row["rank"] for row in ranking] in (["1", "2"], ["1.5", "1.5"]) and {
        row["backbone"] for row in ranking
    } == set(DEFAULTS.settings.backbones)
    means = [float(row["mean"]) for row in ranking]  # ranked by the mean over seeds, as every verdict is
    assert means == sorted(means, reverse=True) and all(
        row["n_seeds"] == "2" and row["complete"] == "True" for row in ranking
    )
    for row in ranking:
        accs = [r["best_test_acc"] for r in runs if r["backbone"] == row["backbone"]]
        assert float(row["mean"]) == pytest.approx(np.mean(accs)) and float(row["best_of_seeds"]) == max(accs)
        assert float(row["train_device_hours"]) > 0 and float(row["params_m"]) > 1
    rec = json.loads((tmp_path / "out" / "recommendation.json").read_text())
    # The report's rules, judged on the trials' own per-image test predictions. Here, from random init in a few
    # optimizer steps, both backbones sit at exactly 1/3 on the 24 test images: no backbone may be recommended.
    kind, leader = rec["judgement"]["kind"], ranking[0]["backbone"]
    opening = {
        "chance": "No backbone learned on colours",
        "tie": "Tie on colours",
        "clear": f"Use **{leader}** for colours",
        "tied": f"**{leader}** leads",
        "unknown": f"**{leader}** leads",
    }[kind]
    assert rec["verdict"].startswith(opening) and "random initialisation" in rec["verdict"]
    if kind == "chance":
        assert "Use " not in rec["verdict"] and all(row["above_chance"] == "False" for row in ranking)
    elif kind != "tie":
        assert rec["judgement"]["verdict"]["rule"] == "paired t"
    assert any("natural domain" in line and "convnext_tiny" in line for line in rec["prior"])
    html = (tmp_path / "out" / "recommendation.html").read_text()
    assert "Which backbone for colours?" in html and ranking[0]["backbone"] in html
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    # Logged to MLflow beside the sweep's report.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    summary = [
        r
        for r in client.search_runs([client.get_experiment_by_name("my-data-colours").experiment_id])
        if r.info.run_name == "report"
    ][0]
    assert {a.path for a in client.list_artifacts(summary.info.run_id, "recommendation")} >= {
        "recommendation/recommendation.html",
        "recommendation/ranking.csv",
        "recommendation/recommendation.md",
    }

    # Again: the folder is unchanged, so nothing is prepared or trained a second time.
    assert main(DEFAULTS, _argv(tmp_path, source, "--domain", "natural")) == 0
    out = capsys.readouterr().out
    assert "the prepared copy" in out and "4 of 4 trials already finished" in out

    # A class added: the old verdict answers another question. It is prepared again and trained again, in an
    # experiment of its own, never reported as the answer for the new data.
    rng = np.random.default_rng(1)
    (source / "yellow").mkdir()
    for i in range(40):
        image = np.clip(np.array((220, 210, 40)) + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(source / "yellow" / f"yellow_{i:03d}.png")
    argv = _argv(tmp_path, source, "--domain", "natural", "--backbones", "shufflenet_v2_x2_0", "--seeds", "0")
    del argv[argv.index("--out") : argv.index("--out") + 2]  # the default folder: one per data version
    monkeypatch.chdir(tmp_path)
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    assert "preparing again" in out and "already finished" not in out
    new = out.split("this data's results go to experiment '")[1].split("'")[0]
    assert new.startswith("my-data-colours-") and new != "my-data-colours"
    (run,) = tracking.fetch_trial_results(uri, new)
    assert run["status"] == "FINISHED" and MlflowClient(uri).get_run(run["run_id"]).data.params["num_classes"] == "4"
    assert len(tracking.fetch_trial_results(uri, "my-data-colours")) == 4  # the old results stay, apart
    rec = json.loads((tmp_path / "reports" / new / "recommendation.json").read_text())
    assert [r["backbone"] for r in rec["ranking"] if r["n_seeds"]] == ["shufflenet_v2_x2_0"]
    assert (tmp_path / "reports" / new / "data_check.txt").is_file()
    old = json.loads((tmp_path / "out" / "recommendation.json").read_text())  # the earlier data's, untouched
    assert len([r for r in old["ranking"] if r["n_seeds"]]) == 2


@pytest.mark.slow
def test_budget_mode_on_digits_folder_stops_and_reports_what_it_stopped(ray_local, tmp_path, capsys):
    planted = plant_problems(digits_folder(tmp_path / "digits_folder"))
    argv = _argv(
        tmp_path,
        tmp_path / "digits_folder",
        "--accept-warnings",
        "--max-epochs",
        "3",
        "--scheduler",
        "asha",
        "--grace-period",
        "1",
        "--budget-epochs",
        "5",
    )
    # Accepted or not, a class with a single training row cannot be validated on: refused before Ray starts.
    assert main(DEFAULTS, argv) == 2
    assert "1 class(es) have a single training row, none to hold out (x)" in capsys.readouterr().err
    for split in ("train", "test"):
        shutil.rmtree(tmp_path / "digits_folder" / split / "x")
    assert main(DEFAULTS, argv) == 0
    out = capsys.readouterr().out
    assert "going on despite 2 serious problem(s)" in out and "the sweep's budget is spent" in out

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = tracking.fetch_trial_results(uri, "my-data-digits_folder")
    assert 5 <= sum(r["epochs_run"] for r in runs) < 5 + 3  # the budget, plus at most the epoch in flight
    stopped = [r for r in runs if r["stopped_by"]]
    assert stopped and all(r["stopped_by"] in ("budget", "asha") for r in stopped)
    rec = json.loads((tmp_path / "out" / "recommendation.json").read_text())
    listed = {(s["seed"], r["backbone"]) for r in rec["ranking"] for s in r["stopped"]}
    assert listed == {(r["seed"], r["backbone"]) for r in stopped}
    ran = {r["key"] for r in runs}
    assert (
        set(rec["not_run"])
        == {str(k) for k in ordered_keys(DEFAULTS.settings.backbones, "digits_folder", [1.0], [0, 1])} - ran
    )
    markdown = (tmp_path / "out" / "recommendation.md").read_text()
    assert "## Stopped early" in markdown and "## Data check" in markdown and planted["broken"] in markdown
    # The unreadable file was skipped, not trained on; the duplicate was kept, as accepted.
    manifest = json.loads((tmp_path / "data" / "digits_folder" / "manifest.json").read_text())
    assert [s["id"] for s in manifest["skipped_corrupt"]] == [planted["broken"]]


def test_missing_weights_and_store_refuse_before_any_image_is_read(tmp_path, capsys):
    """Without --allow-random-init, weights that cannot be had stop the run before the data check reads a
    single image (an unreadable one included) and before anything is prepared or written; the tracking
    store's problem is listed in the same error."""
    source = separable_folder(tmp_path / "colours", per_class=4)
    (source / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    argv = [a for a in _argv(tmp_path, source) if a != "--allow-random-init"]
    argv[argv.index("--tracking-uri") + 1] = "sqlite:////proc/rayexp/mlflow.db"
    assert main(DEFAULTS, argv) == 2
    captured = capsys.readouterr()
    assert "3 problems found, nothing was started" in captured.err, captured.err
    assert "weights cannot be had or do not fit:" in captured.err
    assert "shufflenet_v2_x2_0: " in captured.err and "mobilenet_v3_large: " in captured.err
    assert "the MLflow store sqlite:////proc/rayexp/mlflow.db cannot be created" in captured.err
    assert "serious problem" not in captured.err and "broken.png" not in captured.err + captured.out
    assert "checking" not in captured.out  # the data check never started
    for folder in ("out", "data", "storage"):
        assert not (tmp_path / folder).exists(), folder


def test_missing_weights_are_listed_with_the_data_checks_findings_in_one_round(tmp_path, capsys):
    """With the store usable, missing weights no longer stop the run before the data check: its serious
    findings (here an unreadable image) come in the same error, so one round lists everything to fix; nothing is
    prepared."""
    source = separable_folder(tmp_path / "colours", per_class=4)
    (source / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    argv = [a for a in _argv(tmp_path, source) if a != "--allow-random-init"]
    assert main(DEFAULTS, argv) == 2
    captured = capsys.readouterr()
    assert "checking" in captured.out and "broken.png" in captured.out  # the check ran
    assert "weights cannot be had or do not fit:" in captured.err and "shufflenet_v2_x2_0: " in captured.err
    assert "the data check found serious problems" in captured.err and "unreadable" in captured.err
    assert not (tmp_path / "data").exists()  # nothing prepared


def test_default_output_folder_is_under_reports(tmp_path, monkeypatch, capsys):
    """Without --out the data check lands in reports/my-data-<name>/, not in a folder beside the user's files."""
    source = separable_folder(tmp_path / "colours", per_class=2)
    (source / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    monkeypatch.chdir(tmp_path)
    argv = _argv(tmp_path, source)
    del argv[argv.index("--out") : argv.index("--out") + 2]
    assert main(DEFAULTS, argv) == 2  # the unreadable file (and two images a class) are serious problems
    assert "serious problem(s)" in capsys.readouterr().err
    assert (tmp_path / "reports" / "my-data-colours" / "data_check.txt").is_file()
    assert not (tmp_path / "colours" / "data_check.txt").exists() and not (tmp_path / "data").exists()
