"""The Ray Data pipeline from shards to the training loop: read, filter, decode, resize, batch.

Decoding and resizing run as Ray Data tasks beside the training worker, so the worker's CPU time goes
to feeding the device. Batches leave the pipeline as uint8 HxWx3 (four times smaller than float) and are
normalised on the training device by :func:`to_model_input`.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from rayexp.data.shards import rank_ranges, split_paths


def decode_resize_batch(batch: dict[str, np.ndarray], size: Sequence[int]) -> dict[str, np.ndarray]:
    """Decode a batch of encoded images to RGB and resize each to ``size`` (H, W), bilinear with antialias.

    The resize ignores aspect ratio, as the paper's protocol does.
    """
    height, width = int(size[0]), int(size[1])
    images = np.empty((len(batch["image"]), height, width, 3), dtype=np.uint8)
    for i, data in enumerate(batch["image"]):
        with Image.open(io.BytesIO(data)) as pil:
            pil = pil.convert("RGB")
            if pil.size != (width, height):
                pil = pil.resize((width, height), Image.Resampling.BILINEAR)
            images[i] = np.asarray(pil)
    return {"image": images, "label": batch["label"].astype(np.int64)}


def ray_fraction_expr(manifest: dict, fraction: float, part: str = "all"):
    """The rule of :func:`rayexp.data.shards.fraction_filter` as a Ray Data expression.

    Ray Data pushes it down into the Parquet scan, so row groups outside the fraction are not read.
    """
    from ray.data.expressions import col, lit

    ranges = rank_ranges(manifest, fraction, part)
    expr = None
    for labels, lo, hi in ranges:
        term = col("label").is_in(labels) & (col("rank") < lit(hi))
        if lo:
            term = term & (col("rank") >= lit(lo))
        expr = term if expr is None else expr | term
    return (col("rank") < lit(max(hi for _, _, hi in ranges))) & expr


def build_split_dataset(
    data_dir: str | os.PathLike,
    manifest: dict,
    split: str,
    fraction: float,
    image_size: Sequence[int],
    decode_batch_size: int = 64,
    part: str = "all",
):
    """A Ray Dataset of one split (a fraction of it, or its train/val part, for ``train``) as resized uint8 images and labels."""
    import ray.data

    dataset = ray.data.read_parquet(split_paths(data_dir, manifest, split)).select_columns(["image", "label", "rank"])
    if split == "train" and (fraction < 1.0 or part != "all"):
        dataset = dataset.filter(expr=ray_fraction_expr(manifest, fraction, part))
    return dataset.map_batches(
        decode_resize_batch,
        fn_kwargs={"size": tuple(image_size)},
        batch_format="numpy",
        batch_size=decode_batch_size,
    )


def split_rows(manifest: dict, split: str, fraction: float = 1.0, part: str = "all") -> int:
    """Rows a trial reads from ``split``: all of it, or ``fraction`` (or its train/val part) of the training split."""
    if split == "train" and (fraction < 1.0 or part != "all"):
        return sum(len(labels) * (hi - lo) for labels, lo, hi in rank_ranges(manifest, fraction, part))
    return manifest["splits"][split]["rows"]


def build_trial_datasets(data_dir: str | os.PathLike, manifest: dict, fraction: float, selection: str, cache_bytes: float) -> tuple[dict, bool]:
    """The Ray Datasets of one trial (train, test, and val when ``selection == "val"``), and whether cached.

    When the decoded, resized images fit in ``cache_bytes`` (most of the 20 datasets at a 1% or 10%
    fraction do, several at 100%), they are decoded once into Ray's object store and every epoch reads
    them from memory instead of decoding again; augmentation still differs every epoch, as it is applied
    after the cache.
    """
    size = manifest["input_size"]
    if selection == "val":
        datasets = {
            "train": build_split_dataset(data_dir, manifest, "train", fraction, size, part="train"),
            "val": build_split_dataset(data_dir, manifest, "train", fraction, size, part="val"),
        }
    else:
        datasets = {"train": build_split_dataset(data_dir, manifest, "train", fraction, size)}
    datasets["test"] = build_split_dataset(data_dir, manifest, "test", 1.0, size)
    decoded = (split_rows(manifest, "train", fraction) + split_rows(manifest, "test")) * size[0] * size[1] * 3
    cached = decoded <= cache_bytes
    if cached:
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    return datasets, cached


def augments(manifest: dict, enabled: bool = True) -> bool:
    """Whether a trial on this dataset uses TrivialAugmentWide: the protocol's choice (all but BreakHis and
    Galaxy10), unless turned off for the sweep."""
    from rayexp.data.catalog import CATALOG

    default = CATALOG[manifest["name"]].augment if manifest["name"] in CATALOG else True
    return enabled and bool(manifest.get("augment", default))


def trivial_augment(images: torch.Tensor, seed: int) -> torch.Tensor:
    """TrivialAugmentWide on each image of an N,H,W,3 uint8 batch, one random op per image.

    Seeded per call (the caller derives ``seed`` from trial seed, epoch and batch) so a trial's
    augmentation is the same every time it runs, and resumes identically.
    """
    from torchvision.transforms import v2

    augment = v2.TrivialAugmentWide()
    chw = images.permute(0, 3, 1, 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([augment(image) for image in chw])
    return out.permute(0, 2, 3, 1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(manifest: dict, mode: str) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the dataset's training split (the default) or ImageNet's."""
    if mode == "imagenet":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if mode == "dataset":
        return manifest["normalization"]["mean"], manifest["normalization"]["std"]
    raise ValueError(f"normalization {mode!r}: use dataset or imagenet")


class Normalizer:
    """Turns a pipeline batch into the model's input on the device: float, channels-last, normalised."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch["image"].to(self.device, non_blocking=True)  # N,H,W,3 uint8
        images = images.permute(0, 3, 1, 2).float()  # a channels-last view of N,3,H,W
        images = (images - self.mean) / self.std
        labels = batch["label"].to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last), labels
