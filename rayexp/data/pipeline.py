"""The Ray Data pipeline from shards to a trial's process: read, filter, decode, resize.

Decoding and resizing run as Ray Data tasks beside the training worker (``torchvision.io``'s
libjpeg-turbo/libpng decoders, then an antialiased bilinear resize), so the worker's CPU time goes to
feeding the device. Images stay uint8 HxWx3 (four times smaller than float) until
:class:`rayexp.data.batches.Normalizer` turns them into the model's input on the training device.

When a trial's decoded images fit in its cache budget, :class:`rayexp.data.batches.TrialBatches` pulls each
split through Ray Data once into the worker's memory; every epoch then shuffles, augments and batches from
memory, with no decoding and no per-epoch Ray Data execution. What happens to the batches inside the process
that trains is :mod:`rayexp.data.batches`, which needs no Ray.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Sequence

import numpy as np
import ray.data
from ray.data.expressions import col, lit

from rayexp.data.batches import CACHE_SPLITS
from rayexp.data.imagefile import ImageFileError, at_input_size, decode_stored
from rayexp.data.rows import Dialect, TrialRows, split_rows, trial_rows
from rayexp.data.shards import split_paths
from rayexp.errors import RayexpError

DECODE_BLOCK_ROWS = 256  # rows per Ray Data block to decode: small enough that every data CPU gets some


class ShardDataError(RayexpError):
    """A shard row that cannot be trained on: an undecodable image or a label outside the classes."""


def decode_resize_batch(
    batch: dict[str, np.ndarray],
    size: Sequence[int],
    split: str | None = None,
    n_classes: int | None = None,
    dataset: str = "NAME",
) -> dict[str, np.ndarray]:
    """Decode a batch of encoded images to RGB and resize each to ``size`` (H, W), bilinear with antialias.

    The resize ignores aspect ratio, as the paper's protocol does. ``torchvision.io`` decodes a shard's
    JPEG or PNG in about half the time PIL takes, and the resize runs on the decoded tensor without a
    copy back to PIL. A corrupt image or a label outside ``0..n_classes-1`` raises :class:`ShardDataError`
    naming the shard file (``path``) and the row's ``id`` when the batch has those columns. A ``rank``
    column passes through (int64): with the label it names the row in its split, so that an evaluation's
    predictions can be written against the rows' ids.
    """

    def where(i: int) -> str:
        path = str(batch["path"][i]) if "path" in batch else "?"
        row = str(batch["id"][i]) if "id" in batch else f"#{i}"
        return f"shard {path}, row id {row!r}"

    fix = f"prepare the dataset again (python datasets/prepare.py {dataset} --force)"

    labels = batch["label"].astype(np.int64)
    if n_classes is not None:
        bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if len(bad):
            raise ShardDataError(f"{where(bad[0])}: label {labels[bad[0]]} is outside 0..{n_classes - 1}; {fix}")
    size = (int(size[0]), int(size[1]))
    images = np.empty((len(batch["image"]), *size, 3), dtype=np.uint8)
    for i, data in enumerate(batch["image"]):
        try:
            chw = decode_stored(data)
        except ImageFileError as exc:
            raise ShardDataError(
                f"{where(i)}: the image cannot be decoded ({exc}); the shard changed after preparation: {fix}"
            ) from None
        images[i] = at_input_size(chw, size).permute(1, 2, 0).numpy()
    out = {"image": images, "label": labels}
    if "rank" in batch:
        out["rank"] = batch["rank"].astype(np.int64)
    if split is not None:
        out["split"] = np.full(len(images), CACHE_SPLITS.index(split), dtype=np.int8)
    return out


def configure_data_context(data_cpus: float):
    """Set this process's Ray Data context up the way every trial reads shards; returns the execution
    options for a trial's ingest: order preserved (same seed, same batches), decoding bounded to
    ``data_cpus`` so that the training worker keeps its own CPUs."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # The V1 Parquet reader plans a read in this process; V2 starts a footer-reader actor (a new Python
    # process) for every execution, which cost ~1 s per split per trial on a 2-core machine.
    context.use_datasource_v2 = False
    # Its read planning logs two INFO lines per split per trial, which drown Tune's progress table.
    logging.getLogger("ray.data._internal.datasource.parquet_datasource").setLevel(logging.WARNING)
    return ray.data.ExecutionOptions(preserve_order=True, resource_limits=ray.data.ExecutionResources(cpu=data_cpus))


# TrialRows' filter in Ray Data's expressions: Ray Data pushes it down into the Parquet scan, so row groups
# whose ``position`` statistics lie outside the rows are not read. (Ray 2.60 refuses a PyArrow expression
# there: read_parquet's ``filter=`` is deprecated, and an error with its default V2 reader.)
RAY_DATA = Dialect(col, lit, lambda column, values: column.is_in(values))


def build_split_dataset(
    data_dir: str | os.PathLike,
    manifest: dict,
    split: str,
    fraction: float,
    image_size: Sequence[int],
    decode_batch_size: int = 64,
    part: str = "all",
    tag: str | None = None,
):
    """A Ray Dataset of one split (a fraction of it, or its train/val part, for ``train``) as resized uint8
    images and labels; with ``tag``, also a ``split`` column holding that name's code in :data:`CACHE_SPLITS`.
    The rows read are :class:`rayexp.data.rows.TrialRows` ``(split, fraction, part)``."""
    rows = TrialRows(split, fraction, part)
    # A part file holds up to 4,096 rows; read it as several tasks (by row groups) so that every data CPU
    # decodes, each in the same task that read its rows (a repartition between them halved throughput).
    blocks = max(1, math.ceil(manifest["splits"][split]["rows"] / DECODE_BLOCK_ROWS))
    paths = split_paths(data_dir, manifest, split)
    dataset = ray.data.read_parquet(paths, override_num_blocks=blocks, include_paths=True)
    dataset = dataset.select_columns(["image", "label", "rank", "position", "id", "path"])
    if not rows.whole:
        dataset = dataset.filter(expr=rows.filter(manifest, RAY_DATA))
    return dataset.map_batches(
        decode_resize_batch,
        fn_kwargs={
            "size": tuple(image_size),
            "split": tag,
            "n_classes": manifest["n_classes"],
            "dataset": manifest["name"],
        },
        batch_format="numpy",
        batch_size=decode_batch_size,
    )


def build_trial_datasets(
    data_dir: str | os.PathLike, manifest: dict, fraction: float, selection: str, cache_bytes: float
) -> tuple[dict, bool]:
    """The Ray Datasets of one trial, and whether they are cached.

    When the decoded, resized images fit in ``cache_bytes`` (most of the 20 datasets at a 1% or 10%
    fraction do, several at 100%), there is one dataset, ``cache``: the union of the trial's splits with
    a ``split`` column, which :class:`TrialBatches` pulls through Ray Data once, in one execution, into the
    training worker's memory; every epoch then reads from there, and augmentation still differs every
    epoch, as it is applied after the cache. Otherwise there is one dataset per split (``train``,
    ``test``, and ``val`` when ``selection == "val"``), streamed and decoded every epoch.
    """
    size = manifest["input_size"]
    decoded = (split_rows(manifest, "train", fraction) + split_rows(manifest, "test")) * size[0] * size[1] * 3
    cached = decoded <= cache_bytes
    datasets = {
        name: build_split_dataset(
            data_dir, manifest, rows.split, rows.fraction, size, part=rows.part, tag=name if cached else None
        )
        for name, rows in trial_rows(fraction, selection).items()
    }
    if cached:
        first, *rest = datasets.values()
        return {"cache": first.union(*rest)}, True
    return datasets, False


def trial_iterators(datasets: dict, execution: ray.data.ExecutionOptions) -> dict:
    """An iterator over each of a trial's datasets (:func:`build_trial_datasets`), run with the trial's
    ``execution`` options (:func:`configure_data_context`) in the process that trains: what Train's
    ``DataConfig`` gives its one worker for a dataset it does not split, without Train's dataset-manager actor."""
    iterators = {}
    for name, dataset in datasets.items():
        dataset = dataset.copy(dataset)
        dataset.set_name(name)
        dataset.context.execution_options = execution
        iterators[name] = dataset.iterator()
    return iterators
