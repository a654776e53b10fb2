"""The Ray Data pipeline on a real local Ray instance."""

import numpy as np
import pytest
import torch

from rayexp.data.pipeline import Normalizer, build_split_dataset
from rayexp.data.shards import fraction_count, load_manifest, read_split


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
    from rayexp.data.catalog import CATALOG
    from rayexp.data.pipeline import augments

    for name in ("breakhis_40x", "breakhis_400x", "galaxy10"):
        assert not augments({"name": name}), name
    for name in ("cifar10", "dtd", "rsna_pneumonia", "my_own_data"):
        assert augments({"name": name}), name
    assert not augments({"name": "cifar10"}, enabled=False)
    assert CATALOG["breakhis_40x"].input_size == (448, 672) and CATALOG["cifar10"].input_size == (256, 256)


def test_trivial_augment_is_per_image_seeded_and_keeps_shape():
    from rayexp.data.pipeline import trivial_augment

    images = torch.randint(0, 256, (8, 24, 20, 3), dtype=torch.uint8)
    a = trivial_augment(images, seed=1)
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, trivial_augment(images, seed=1))
    assert not torch.equal(a, trivial_augment(images, seed=2))
    assert not torch.equal(a, images)


def test_normalization_uses_the_manifest_or_imagenet(digits_dir):
    from rayexp.data.pipeline import IMAGENET_MEAN, normalization

    manifest = load_manifest(digits_dir, "digits")
    mean, std = normalization(manifest, "dataset")
    assert mean == manifest["normalization"]["mean"] and std == manifest["normalization"]["std"]
    assert normalization(manifest, "imagenet")[0] == list(IMAGENET_MEAN)
    x, _ = Normalizer(mean, std, torch.device("cpu"))(
        {"image": torch.full((1, 2, 2, 3), round(255 * mean[0]), dtype=torch.uint8), "label": torch.zeros(1, dtype=torch.long)}
    )
    assert x.abs().max() < 0.02  # an image at the dataset mean normalises to ~0


@pytest.mark.slow
def test_trial_datasets_resolution_val_holdout_and_cache(ray_local, digits_dir):
    from rayexp.data.pipeline import build_trial_datasets, split_rows

    manifest = load_manifest(digits_dir, "digits")
    datasets, cached = build_trial_datasets(digits_dir, manifest, 0.1, "val", cache_bytes=1e9)
    assert cached and set(datasets) == {"train", "val", "test"}
    counts = {name: ds.count() for name, ds in datasets.items()}
    assert counts["train"] + counts["val"] == split_rows(manifest, "train", 0.1)
    from rayexp.data.shards import fraction_thresholds, holdout_count

    expected_val = sum(holdout_count(k) for k in fraction_thresholds(manifest, 0.1))  # 10% of ~15 per class
    assert counts["val"] == split_rows(manifest, "train", 0.1, part="val") == expected_val > 10
    first = next(iter(datasets["train"].iter_batches(batch_size=4, batch_format="numpy")))
    assert first["image"].shape[1:] == (32, 32, 3)
    _, cached = build_trial_datasets(digits_dir, manifest, 1.0, "test", cache_bytes=0)
    assert not cached
