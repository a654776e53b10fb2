"""The Ray Data pipeline on a real local Ray instance."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from rayexp.data.batches import (
    IMAGENET_MEAN,
    Normalizer,
    TrialBatches,
    augmented,
    augments,
    load_splits,
    memory_batches,
    normalization,
    trivial_augment,
)
from rayexp.data.catalog import CATALOG
from rayexp.data.pipeline import build_split_dataset, build_trial_datasets
from rayexp.data.preparation import dataset_info
from rayexp.data.rows import fraction_count, fraction_thresholds, holdout_count, split_rows
from rayexp.data.shards import load_manifest, read_split
from rayexp.errors import RayexpError


@pytest.mark.slow
def test_pipeline_decodes_resizes_filters_and_normalizes(ray_local, digits_dir):
    manifest = load_manifest(digits_dir, "digits")
    train = build_split_dataset(digits_dir, manifest, "train", 0.1, (32, 32))
    batches = list(train.iter_batches(batch_size=1000, batch_format="numpy"))
    labels = np.concatenate([b["label"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])
    expected = [fraction_count(n, 0.1) for n in manifest["splits"]["train"]["class_counts"]]
    assert np.bincount(labels, minlength=10).tolist() == expected
    assert sorted(labels.tolist()) == sorted(read_split(digits_dir, "digits", "train", 0.1)["label"].to_pylist())
    assert images.shape == (sum(expected), 32, 32, 3) and images.dtype == np.uint8
    x, y = Normalizer(manifest["normalization"]["mean"], manifest["normalization"]["std"], torch.device("cpu"))(
        {"image": torch.from_numpy(images), "label": torch.from_numpy(labels)}
    )
    assert x.shape == (len(labels), 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(x.mean())) < 0.5 and y.dtype == torch.int64


def test_augmentation_follows_the_protocol_per_dataset():
    """The catalog holds the protocol's choice, preparation writes it into the manifest, a trial reads it there."""
    for name in ("breakhis_40x", "breakhis_400x", "galaxy10"):
        assert not CATALOG[name].augment, name
    for name in ("cifar10", "dtd", "rsna_pneumonia"):
        assert CATALOG[name].augment, name
    assert dataset_info("my_own_data", "folder/", None).augment
    assert augments({"augment": True}) and not augments({"augment": False})
    assert not augments({"augment": True}, enabled=False)
    assert CATALOG["breakhis_40x"].input_size == (448, 672) and CATALOG["cifar10"].input_size == (256, 256)


def test_trivial_augment_is_per_image_seeded_and_keeps_shape():
    images = torch.randint(0, 256, (8, 24, 20, 3), dtype=torch.uint8)
    a = trivial_augment(images, seed=1)
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, trivial_augment(images, seed=1))
    assert not torch.equal(a, trivial_augment(images, seed=2))
    assert not torch.equal(a, images)


def test_normalization_uses_the_manifest_or_imagenet(digits_dir):
    manifest = load_manifest(digits_dir, "digits")
    mean, std = normalization(manifest, "dataset")
    assert mean == manifest["normalization"]["mean"] and std == manifest["normalization"]["std"]
    assert normalization(manifest, "imagenet")[0] == list(IMAGENET_MEAN)
    assert normalization(manifest, "model", ([0.5] * 3, [0.25] * 3)) == ([0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="model"):
        normalization(manifest, "model")  # the model's statistics must be given
    x, _ = Normalizer(mean, std, torch.device("cpu"))(
        {
            "image": torch.full((1, 2, 2, 3), round(255 * mean[0]), dtype=torch.uint8),
            "label": torch.zeros(1, dtype=torch.long),
        }
    )
    assert x.abs().max() < 0.02  # an image at the dataset mean normalises to ~0


@pytest.mark.slow
def test_trial_datasets_cache_holds_every_split_once_and_streams_when_too_big(ray_local, digits_dir):
    manifest = load_manifest(digits_dir, "digits")
    datasets, cached = build_trial_datasets(digits_dir, manifest, 0.1, "val", cache_bytes=1e9)
    assert cached and set(datasets) == {"cache"}
    memory = load_splits(datasets["cache"].iterator())
    counts = {name: len(labels) for name, (_, labels, _) in memory.items()}
    expected_val = sum(holdout_count(k) for k in fraction_thresholds(manifest, 0.1))  # 10% of ~15 per class
    assert counts == {
        "train": split_rows(manifest, "train", 0.1, part="train"),
        "val": expected_val,
        "test": manifest["splits"]["test"]["rows"],
    }
    assert split_rows(manifest, "train", 0.1, part="val") == expected_val > 10
    assert memory["train"][0].shape[1:] == (32, 32, 3) and memory["train"][0].dtype == torch.uint8
    # The test split arrives in shard order, as a streamed pass gives it.
    assert (
        memory["test"][1].tolist() == read_split(digits_dir, "digits", "test", columns=["label"])["label"].to_pylist()
    )

    streamed, cached = build_trial_datasets(digits_dir, manifest, 1.0, "test", cache_bytes=0)
    assert not cached and set(streamed) == {"train", "test"}
    assert streamed["train"].count() == manifest["splits"]["train"]["rows"]


@pytest.mark.slow
def test_trial_batches_are_the_same_cached_or_streamed_in_what_they_hold(ray_local, digits_dir):
    from rayexp.orchestrate.artifacts import split_row_ids

    manifest = load_manifest(digits_dir, "digits")
    normalize = Normalizer(manifest["normalization"]["mean"], manifest["normalization"]["std"], torch.device("cpu"))
    ids = split_row_ids(digits_dir, "digits", "test")
    assert len(ids) == manifest["splits"]["test"]["rows"]
    seen = {}
    for cache_bytes in (1e9, 0):
        datasets, cached = build_trial_datasets(digits_dir, manifest, 0.1, "test", cache_bytes=cache_bytes)
        batches = TrialBatches(
            {k: d.iterator() for k, d in datasets.items()}, batch_size=32, seed=3, normalize=normalize, threads=2
        )
        assert batches.cached == cached
        epoch0 = [y for _, y in batches.train(0)]
        assert [len(y) for y in epoch0[:-1]] == [32] * (len(epoch0) - 1)
        again = [y for _, y in batches.train(0)]
        assert all(torch.equal(a, b) for a, b in zip(epoch0, again)), "an epoch's order must be reproducible"
        evaluation = list(batches.evaluation("test")())
        assert all(len(batch) == 3 and batch[2].dtype == torch.int64 for batch in evaluation)
        test = torch.cat([y for _, y, _ in evaluation])
        rows = list(zip(test.tolist(), torch.cat([ranks for _, _, ranks in evaluation]).tolist()))
        # (label, rank) names every test row exactly once, cached or streamed.
        assert len(set(rows)) == len(rows) and sorted(ids[row] for row in rows) == sorted(ids.values())
        seen[cached] = (sorted(torch.cat(epoch0).tolist()), test.tolist(), rows)
    assert seen[True] == seen[False]


def test_augmented_is_seeded_per_batch_and_independent_of_threads():
    images = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8)
    labels = torch.arange(40)
    one = list(augmented(memory_batches(images, labels, 8, shuffle_seed=5), seed=7, threads=1))
    three = list(augmented(memory_batches(images, labels, 8, shuffle_seed=5), seed=7, threads=3))
    assert len(one) == 5
    for a, b in zip(one, three):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    other = list(augmented(memory_batches(images, labels, 8, shuffle_seed=5), seed=8, threads=1))
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(one, other))
    ordered = torch.cat([b["label"] for b in memory_batches(images, labels, 8)])
    assert torch.equal(ordered, labels)


def test_trivial_augment_draws_as_torchvision_does():
    """Our generator-driven TrivialAugmentWide picks the same op and magnitude as torchvision's own, given the
    same seed."""
    image = torch.randint(0, 256, (1, 40, 36, 3), dtype=torch.uint8)
    for seed in range(12):
        torch.manual_seed(seed)
        reference = torch.from_numpy(np.asarray(v2.TrivialAugmentWide()(Image.fromarray(image[0].numpy()))))
        assert torch.equal(trivial_augment(image, seed)[0], reference), seed


def test_predictions_csv_names_each_test_row_by_its_id_and_refuses_an_unknown_row(digits_dir):
    from rayexp.orchestrate.artifacts import predictions_csv, split_row_ids

    table = read_split(digits_dir, "digits", "test", columns=["id", "label", "rank"])
    labels, ranks = table["label"].to_pylist(), table["rank"].to_pylist()
    ids = split_row_ids(digits_dir, "digits", "test")
    predictions = {"label": labels, "prediction": [(label + 1) % 10 for label in labels], "rank": ranks}
    lines = predictions_csv(predictions, ids).splitlines()
    assert lines[0] == "id,label,prediction" and len(lines) == len(labels) + 1
    assert lines[1] == f"{table['id'][0].as_py()},{labels[0]},{(labels[0] + 1) % 10}"
    with pytest.raises(RayexpError, match="not in the test split"):
        predictions_csv({**predictions, "rank": [ranks[0] + 10_000] + ranks[1:]}, ids)
    with pytest.raises(RayexpError, match="distinct rows"):
        predictions_csv({key: values[1:] for key, values in predictions.items()}, ids)
