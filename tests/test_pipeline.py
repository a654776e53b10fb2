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
