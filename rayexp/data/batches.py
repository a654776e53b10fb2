"""A trial's batches inside the process that trains: from decoded uint8 images (a split held in memory, or
streamed from a Ray Data iterator) to the model's input. Shuffle, TrivialAugmentWide in a few threads ahead of
the training loop, normalise on the device.

No Ray import here (Ray Data's iterators are used through their methods only): the GPU check
(``benchmarks/gpu_check.py``, on a machine without Ray) and serving feed models through this module as a
trial does. TrivialAugmentWide runs in a small thread pool, each batch seeded by (trial seed, epoch, batch
index), so it overlaps with the device's work and stays reproducible.
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from rayexp.backbones.specs import IMAGENET_MEAN, IMAGENET_STD

CACHE_SPLITS = ("train", "test", "val")  # the codes of the ``split`` column of a trial's cache dataset


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
    from torchvision.transforms import v2  # over a second to import: paid by the processes that augment

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


def normalization(
    manifest: dict, mode: str, model: tuple[list[float], list[float]] | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std: the dataset's training split (``dataset``), the backbone's weights' own
    (``model``: ``model``, from :func:`rayexp.backbones.factory.model_normalization`) or ImageNet's."""
    if mode == "imagenet":
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    if mode == "dataset":
        return manifest["normalization"]["mean"], manifest["normalization"]["std"]
    if mode == "model" and model is not None:
        return list(model[0]), list(model[1])
    raise ValueError(f"normalization {mode!r}: use dataset, model (with the model's statistics) or imagenet")


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
    """Every row of a trial's ``cache`` dataset (see :func:`rayexp.data.pipeline.build_trial_datasets`), as
    split name -> (uint8 N,H,W,3 images, labels, ranks), each in the order the pipeline gave it.

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

    Cached (``iterators`` holds the ``cache`` dataset of :func:`rayexp.data.pipeline.build_trial_datasets`): its
    splits are loaded into memory (:func:`load_splits`), in a background thread that overlaps with building the
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

    @classmethod
    def in_memory(
        cls,
        splits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        batch_size: int,
        seed: int,
        normalize: "Normalizer",
        augment: bool = True,
        threads: int = 1,
    ) -> "TrialBatches":
        """The batches of splits already in memory (name -> uint8 N,H,W,3 images, labels, ranks), exactly as a
        cached trial's once :func:`load_splits` has run: how a model is fed the trial's way without Ray."""
        batches = cls({}, batch_size, seed, normalize, augment, threads)
        batches.cached, batches._memory = True, dict(splits)
        return batches

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
