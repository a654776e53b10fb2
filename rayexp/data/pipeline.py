"""The Ray Data pipeline from shards to the training loop: read, filter, decode, resize, batch, augment.

Decoding and resizing run as Ray Data tasks beside the training worker (``torchvision.io``'s
libjpeg-turbo/libpng decoders, then an antialiased bilinear resize), so the worker's CPU time goes to
feeding the device. Images stay uint8 HxWx3 (four times smaller than float) until
:class:`Normalizer` turns them into the model's input on the training device.

When a trial's decoded images fit in its cache budget, :class:`TrialBatches` pulls each split through
Ray Data once into the worker's memory; every epoch then shuffles, augments and batches from memory,
with no decoding and no per-epoch Ray Data execution. TrivialAugmentWide runs in a small thread pool
ahead of the training loop, each batch seeded by (trial seed, epoch, batch index), so it overlaps with
the device's work and stays reproducible.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import ray.data
import torch
from PIL import Image
from ray.data.expressions import col, lit

from rayexp.data.rows import Dialect, TrialRows, split_rows, trial_rows
from rayexp.data.shards import split_paths
from rayexp.errors import RayexpError

CACHE_SPLITS = ("train", "test", "val")  # the codes of the ``split`` column of a trial's cache dataset
DECODE_BLOCK_ROWS = 256  # rows per Ray Data block to decode: small enough that every data CPU gets some


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed PNG (a chunk cut short, a CRC that does not match, no IEND), or None.

    torchvision's PNG decoder crashes the whole process (a segfault, which Ray then retries for ever) on a
    PNG that libpng rejects; checking every chunk's CRC first (zlib's crc32, microseconds per image) turns
    any changed byte into an error that can be named.
    """
    if data[:8] != PNG_SIGNATURE:
        return "not a PNG signature"
    view, at = memoryview(data), 8
    while at + 12 <= len(data):
        length = int.from_bytes(view[at : at + 4], "big")
        end = at + 12 + length
        if end > len(data):
            return f"chunk at byte {at} runs past the end"
        if zlib.crc32(view[at + 4 : at + 8 + length]) != int.from_bytes(view[at + 8 + length : end], "big"):
            return f"CRC mismatch in the {bytes(view[at + 4 : at + 8]).decode('latin-1')!r} chunk at byte {at}"
        if view[at + 4 : at + 8] == b"IEND":
            return None
        at = end
    return "no IEND chunk (truncated)"


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
    # torchvision takes over a second to import, and a trial's driver process imports this module only to
    # build its datasets: it is imported where images are decoded or augmented, in the processes that do so.
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize

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
    height, width = int(size[0]), int(size[1])
    images = np.empty((len(batch["image"]), height, width, 3), dtype=np.uint8)
    for i, data in enumerate(batch["image"]):
        problem = png_problem(data) if data[:8] == PNG_SIGNATURE else None
        if problem is None:
            try:
                chw = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError as exc:  # libjpeg's errors; a PNG that would crash never gets here
                problem = str(exc).splitlines()[0][:200]
        if problem is not None:
            raise ShardDataError(
                f"{where(i)}: the image cannot be decoded ({problem}); the shard changed after preparation: {fix}"
            )
        if tuple(chw.shape[1:]) != (height, width):
            chw = resize(chw, [height, width], antialias=True)
        images[i] = chw.permute(1, 2, 0).numpy()
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


def augments(manifest: dict, enabled: bool = True) -> bool:
    """Whether a trial on this dataset uses TrivialAugmentWide: the protocol's choice (all but BreakHis and
    Galaxy10), which preparation wrote into the manifest from the catalog, unless turned off for the sweep."""
    return enabled and bool(manifest["augment"])


def trivial_augment(images: torch.Tensor, seed: int) -> torch.Tensor:
    """TrivialAugmentWide on each image of an N,H,W,3 uint8 batch, one random op per image.

    Seeded per call (the caller derives ``seed`` from trial seed, epoch and batch) so a trial's
    augmentation is the same every time it runs, and resumes identically. The op and its magnitude are
    drawn exactly as ``torchvision.transforms.v2.TrivialAugmentWide.forward`` draws them, but from a
    generator of our own instead of torch's global one, so that threads can augment batches in parallel
    while the training loop draws dropout masks from the global generator. The ops run on PIL images,
    as in torchvision's usual recipe: about twice as fast as on tensors, and Pillow releases the GIL.
    """
    from torchvision.transforms import v2  # imported when used: see decode_resize_batch

    augment = v2.TrivialAugmentWide()
    space = augment._AUGMENTATION_SPACE
    names = tuple(space)
    generator = torch.Generator().manual_seed(seed)
    height, width = images.shape[1], images.shape[2]
    out = np.empty(tuple(images.shape), dtype=np.uint8)
    for i, array in enumerate(images.numpy()):
        name = names[int(torch.randint(len(names), (), generator=generator))]
        magnitudes_fn, signed = space[name]
        magnitudes = magnitudes_fn(augment.num_magnitude_bins, height, width)
        magnitude = 0.0
        if magnitudes is not None:
            magnitude = float(magnitudes[int(torch.randint(augment.num_magnitude_bins, (), generator=generator))])
            if signed and torch.rand((), generator=generator) <= 0.5:
                magnitude *= -1
        image = augment._apply_image_or_video_transform(
            Image.fromarray(array), name, magnitude, interpolation=augment.interpolation, fill=augment._fill
        )
        out[i] = np.asarray(image)
    return torch.from_numpy(out)


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


Batch = dict[str, torch.Tensor]


def load_splits(iterator, read_batch_size: int = 1024) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Every row of a trial's ``cache`` dataset (see :func:`build_trial_datasets`), as split name ->
    (uint8 N,H,W,3 images, labels, ranks), each in the order the pipeline gave it.

    One pass through the pipeline, decoding in parallel in Ray Data's tasks; afterwards the splits live
    in this process and no epoch decodes again.
    """
    images, labels, ranks, splits = [], [], [], []
    for batch in iterator.iter_batches(batch_size=read_batch_size, batch_format="numpy"):
        images.append(batch["image"])
        labels.append(batch["label"])
        ranks.append(batch["rank"])
        splits.append(batch["split"])
    if not images:
        raise ValueError("the trial's data yielded no rows")
    all_images, all_labels = (
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels).astype(np.int64)),
    )
    all_ranks = torch.from_numpy(np.concatenate(ranks).astype(np.int64))
    codes = torch.from_numpy(np.concatenate(splits))
    return {
        name: (all_images[codes == i], all_labels[codes == i], all_ranks[codes == i])
        for i, name in enumerate(CACHE_SPLITS)
        if bool((codes == i).any())
    }


def memory_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle_seed: int | None = None,
    ranks: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """Batches of an in-memory split; a full shuffle seeded by ``shuffle_seed``, or in order when None.
    With ``ranks``, each batch has its rows' ``rank`` too."""
    n = len(labels)
    order = (
        torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed)) if shuffle_seed is not None else None
    )
    columns = {"image": images, "label": labels, **({"rank": ranks} if ranks is not None else {})}
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
        yield {name: column[rows] for name, column in columns.items()}


def threaded_map(
    work: Callable[[int, Batch], object], batches: Iterable[Batch], threads: int = 1, ahead: int | None = None
) -> Iterator:
    """``work(i, batch)`` for each batch, in order, ``threads`` at a time and up to ``ahead`` batches in
    advance of the caller, which trains meanwhile (Pillow's and torch's image ops release the GIL)."""
    if threads <= 1:
        for index, batch in enumerate(batches):
            yield work(index, batch)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rayexp-batches") as pool:
        pending: collections.deque = collections.deque()
        for index, batch in enumerate(batches):
            pending.append(pool.submit(work, index, batch))
            if len(pending) >= (ahead or 2 * threads):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a trial's epoch: its shuffle, and with the batch index, its augmentation."""
    return seed * 100_003 + epoch


def augment_batch(batch: Batch, seed: int, index: int) -> Batch:
    """Batch ``index`` of an epoch whose seed is ``seed``, with :func:`trivial_augment` applied."""
    return {**batch, "image": trivial_augment(batch["image"], seed * 100_019 + index)}


def augmented(batches: Iterable[Batch], seed: int, threads: int = 1) -> Iterator[Batch]:
    """``batches`` augmented by :func:`augment_batch`; the result does not depend on ``threads``."""
    return threaded_map(lambda index, batch: augment_batch(batch, seed, index), batches, threads)


class TrialBatches:
    """The batches one trial trains and evaluates on, from its Ray Data iterators (Train dataset shards).

    Cached (``iterators`` holds the ``cache`` dataset of :func:`build_trial_datasets`): its splits are
    loaded into memory (:func:`load_splits`), in a background thread that overlaps with building the
    model, and every epoch is a fresh seeded permutation; otherwise every epoch streams from the ``train``
    iterator with a seeded local shuffle buffer. Training batches are augmented when ``augment``, then
    normalised by ``normalize``, in ``threads`` threads ahead of the training loop; on a GPU the
    normalisation stays on the device (the uint8 batch crosses PCIe, four times smaller than float).
    Training yields ``(images, labels)``; evaluation yields ``(images, labels, ranks)``, the ranks on the
    CPU, so that each prediction can be traced to its row of the split.
    """

    def __init__(
        self,
        iterators: dict,
        batch_size: int,
        seed: int,
        normalize: "Normalizer",
        augment: bool = True,
        threads: int = 1,
        shuffle_buffer: int = 1024,
    ) -> None:
        self.iterators, self.cached, self.batch_size, self.seed = iterators, "cache" in iterators, batch_size, seed
        self.normalize, self.augment, self.threads, self.shuffle_buffer = normalize, augment, threads, shuffle_buffer
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._loading: Future | None = None
        if self.cached:
            loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rayexp-cache")
            self._loading = loader.submit(load_splits, iterators["cache"])
            loader.shutdown(wait=False)

    @property
    def memory(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The in-memory splits (waits for the load to finish); empty when not cached."""
        if self._loading is not None:
            self._memory, self._loading = self._loading.result(), None
        return self._memory

    def train(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch ``epoch``'s shuffled, augmented, normalised training batches: the same every time it is asked for."""
        seed = epoch_seed(self.seed, epoch)
        if self.cached:
            images, labels, _ = self.memory["train"]
            batches: Iterable[Batch] = memory_batches(images, labels, self.batch_size, shuffle_seed=seed)
        else:
            batches = self.iterators["train"].iter_torch_batches(
                batch_size=self.batch_size,
                local_shuffle_buffer_size=self.shuffle_buffer,
                local_shuffle_seed=seed,
                device="cpu",
            )
        return self._batches(batches, augment_seed=seed if self.augment else None)

    def _batches(
        self, source: Iterable[Batch], augment_seed: int | None, ranks: bool = False
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        on_cpu = self.normalize.device.type == "cpu"

        def finish(batch: Batch) -> tuple[torch.Tensor, ...]:
            return (*self.normalize(batch), batch["rank"]) if ranks else self.normalize(batch)

        def work(index: int, batch: Batch):
            if augment_seed is not None:
                batch = augment_batch(batch, augment_seed, index)
            return finish(batch) if on_cpu else batch

        for result in threaded_map(work, source, self.threads):
            yield result if on_cpu else finish(result)

    def evaluation(self, split: str) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """A function giving ``split``'s batches in order, normalised, unaugmented, as ``(images, labels,
        ranks)`` (what :func:`rayexp.training.fit` takes)."""

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            if self.cached:
                images, labels, ranks = self.memory[split]
                source: Iterable[Batch] = memory_batches(images, labels, self.batch_size, ranks=ranks)
            else:
                source = self.iterators[split].iter_torch_batches(batch_size=self.batch_size, device="cpu")
            return self._batches(source, augment_seed=None, ranks=True)

        return batches
