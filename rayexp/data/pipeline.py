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

from rayexp.data.shards import split_paths, threshold_groups


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


def ray_fraction_expr(manifest: dict, fraction: float):
    """The fraction rule of :func:`rayexp.data.shards.fraction_filter` as a Ray Data expression.

    Ray Data pushes it down into the Parquet scan, so row groups outside the fraction are not read.
    """
    from ray.data.expressions import col, lit

    groups = threshold_groups(manifest, fraction)
    expr = None
    for labels, k in groups:
        term = col("label").is_in(labels) & (col("rank") < lit(k))
        expr = term if expr is None else expr | term
    return (col("rank") < lit(max(k for _, k in groups))) & expr


def build_split_dataset(
    data_dir: str | os.PathLike,
    manifest: dict,
    split: str,
    fraction: float,
    image_size: Sequence[int],
    decode_batch_size: int = 64,
):
    """A Ray Dataset of one split (a fraction of it for ``train``) as resized uint8 images and labels."""
    import ray.data

    dataset = ray.data.read_parquet(split_paths(data_dir, manifest, split)).select_columns(["image", "label", "rank"])
    if split == "train" and fraction < 1.0:
        dataset = dataset.filter(expr=ray_fraction_expr(manifest, fraction))
    return dataset.map_batches(
        decode_resize_batch,
        fn_kwargs={"size": tuple(image_size)},
        batch_format="numpy",
        batch_size=decode_batch_size,
    )


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
