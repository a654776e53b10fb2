"""Plain PyTorch training: one ``train_one_epoch`` / ``evaluate`` pair and the epoch loop around them.

No Ray and no MLflow here: batches arrive as any iterable of ``(images, labels)`` already on the device
(evaluation batches may carry each row's ``rank`` third, so that predictions can be traced back to the
split's rows), and everything the outside world wants to hear about an epoch goes through the
``on_epoch`` callback, together with a function that builds the checkpoint dict. A unit test drives this
module on the CPU with a tiny model.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from rayexp.errors import RayexpError
from rayexp.options import option, problems

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


SELECTIONS = ("test", "val")
PHASES = ("AdamW", "SGD")


@dataclass(frozen=True)
class TrainConfig:
    """The hyperparameters of one trial (the paper's DualOpt); every field is logged as an MLflow param.

    The fields with an :func:`~rayexp.options.option` are sweep settings, on the sweeps' command line; the
    others are the protocol's fixed values."""

    max_epochs: int = option(
        100, help="safety cap on epochs per DualOpt phase (AdamW, then SGD)", type=int, minimum=1, group="protocol"
    )
    patience: int = option(
        10, help="epochs without improvement that end a phase", type=int, minimum=1, group="protocol"
    )
    lr: float = 1e-3  # AdamW
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    sgd_lr: float = 1e-3
    sgd_momentum: float = 0.9
    dualopt: bool = option(
        True, help="AdamW only: skip DualOpt's SGD phase", negate=True, flag="--no-dualopt", group="protocol"
    )
    selection: str = option(
        "test",
        help="the accuracy that picks the best epoch: the test split's (the paper) or a held-out 10%% of the "
        "training rows'",
        choices=SELECTIONS,
        group="protocol",
    )
    precision: str = option("auto", help="auto: bf16/fp16 on GPU, fp32 on CPU", choices=PRECISIONS, group="protocol")
    seed: int = 0

    def __post_init__(self) -> None:
        if bad := problems(TrainConfig, self):
            raise RayexpError("; ".join(bad))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a GPU that supports it, fp16 on other GPUs, fp32 on the CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast over forward and loss for bf16/fp16; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def keep_fp32(module: nn.Module) -> nn.Module:
    """Make ``module`` compute in fp32 even under bf16/fp16 autocast; returns it, its parameters untouched.

    Applied to the classifier head, so that logits, their argmax and the loss are fp32: under autocast the
    final Linear would otherwise round the logits to bf16 (8 bits of mantissa), and two classes within
    0.4% of each other would be decided by that rounding. The head is a sliver of the compute. The
    instance's ``forward`` is wrapped, not the module replaced, so state dict keys stay as they were.
    """
    inner = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return inner(x.float())

    module.forward = forward
    return module


def make_optimizer(model: nn.Module, cfg: TrainConfig, phase: int = 0) -> torch.optim.Optimizer:
    """DualOpt's optimizer for ``phase``: 0 AdamW, 1 a fresh SGD with momentum."""
    if phase == 0:
        return torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    return torch.optim.SGD(model.parameters(), lr=cfg.sgd_lr, momentum=cfg.sgd_momentum)


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A grad scaler, enabled only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def _timed(batches: Iterable) -> Iterator[tuple[object, float]]:
    """Yield each batch with the seconds spent waiting for it."""
    iterator = iter(batches)
    while True:
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - start


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str,
) -> dict[str, float]:
    """One pass over ``batches``; returns loss, accuracy, throughput and the share of time spent waiting for data.

    A batch of a single image (the last one, when the training rows are one more than a multiple of the batch
    size) is skipped: BatchNorm cannot train on one image, and every backbone here has BatchNorm or LayerNorm
    statistics that one image would only distort. The rows are shuffled each epoch, so no row is always left out.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    wait = 0.0
    start = time.perf_counter()
    for (images, labels), waited in _timed(batches):
        wait += waited
        if len(labels) == 1:
            continue
        with autocast(device, precision):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.detach().float().argmax(1) == labels).sum()
        seen += len(labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if seen == 0:
        raise RayexpError("the training split yielded no batches")
    return {
        "train_loss": loss_sum.item() / seen,
        "train_acc": correct.item() / seen,
        "train_images": seen,
        "train_seconds": seconds,
        "train_images_per_s": seen / max(seconds, 1e-9),
        "data_wait_fraction": wait / max(seconds, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    device: torch.device,
    precision: str,
    num_classes: int,
) -> dict:
    """Global top-1 (correct / total, not a mean of per-batch accuracies), balanced accuracy, loss, and
    the images/second of the pass (the backbone's inference throughput, batches included).

    Batches are ``(images, labels)`` or ``(images, labels, ranks)``. ``predictions`` holds every image's
    label and predicted class in the order the batches came, and its ``rank`` when every batch had one
    (with the label, rank names a row of a split): per-image predictions let a report go beyond the
    confusion matrix. They stay on the device until the pass ends, so collecting them costs one copy.
    """
    model.eval()
    start = time.perf_counter()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = torch.zeros((), device=device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    seen_labels, seen_predictions, seen_ranks = [], [], []
    for images, labels, *ranks in batches:
        with autocast(device, precision):
            logits = model(images).float()
            loss_sum += criterion(logits, labels)
        predictions = logits.argmax(1)
        confusion += torch.bincount(labels * num_classes + predictions, minlength=num_classes**2).view(
            num_classes, num_classes
        )
        seen_labels.append(labels)
        seen_predictions.append(predictions)
        seen_ranks += ranks
    confusion = confusion.cpu()  # waits for the device
    seconds = time.perf_counter() - start
    total = int(confusion.sum())
    if total == 0:
        raise RayexpError("the evaluation split yielded no batches")
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    present = confusion.sum(1) > 0
    return {
        "acc": float(confusion.diag().sum()) / total,
        "balanced_acc": float(per_class[present].mean()),
        "loss": float(loss_sum) / total,
        "n": total,
        "images_per_s": total / max(seconds, 1e-9),
        "confusion": confusion.tolist(),
        "predictions": {
            "label": torch.cat(seen_labels).cpu().tolist(),
            "prediction": torch.cat(seen_predictions).cpu().tolist(),
            **({"rank": torch.cat(seen_ranks).cpu().tolist()} if len(seen_ranks) == len(seen_labels) else {}),
        },
    }


@dataclass
class Progress:
    """Where a trial stands in DualOpt; with the weights, optimizer and RNG states, enough to continue exactly."""

    epoch: int = 0  # epochs completed, both phases
    phase: int = 0  # 0 AdamW, 1 SGD
    phase_epochs: int = 0
    best_acc: float = -1.0  # best monitored accuracy over both phases
    best_epoch: int = 0
    best_test_acc: float = -1.0  # test accuracy at the best epoch (the best test accuracy when selection=test)
    best_test_balanced_acc: float = -1.0
    best_test_confusion: list = field(default_factory=list)  # rows: true class, columns: predicted
    best_test_predictions: dict = field(default_factory=dict)  # evaluate's "predictions" at the best epoch
    epochs_without_improvement: int = 0
    switch_epoch: int = 0  # epoch after which SGD took over; 0 if it never did
    done: bool = False
    capped: list[str] = field(default_factory=list)  # names (PHASES) of the phases that ended at max_epochs
    history: list[dict] = field(default_factory=list)

    def update(self, monitored: float, test: dict) -> bool:
        """Record one epoch's monitored accuracy; True if it beats the best of both phases."""
        self.epoch += 1
        self.phase_epochs += 1
        if monitored > self.best_acc:
            self.best_acc, self.best_epoch, self.epochs_without_improvement = monitored, self.epoch, 0
            self.best_test_acc, self.best_test_balanced_acc = test["acc"], test["balanced_acc"]
            self.best_test_confusion = test.get("confusion", [])
            self.best_test_predictions = test.get("predictions", {})
            return True
        self.epochs_without_improvement += 1
        return False

    def advance(self, cfg: TrainConfig) -> str:
        """After :meth:`update`: ``continue``, ``switch`` (AdamW plateaued or hit the cap: SGD from the best
        weights) or ``stop``.

        A phase that hits ``max_epochs`` while still within patience is recorded in ``capped``: it was cut
        short by the safety cap, not ended by the protocol, so its result may understate the backbone.
        """
        if self.epochs_without_improvement < cfg.patience and self.phase_epochs < cfg.max_epochs:
            return "continue"
        if self.phase_epochs >= cfg.max_epochs and self.epochs_without_improvement < cfg.patience:
            self.capped.append(PHASES[self.phase])
        if self.phase == 0 and cfg.dualopt:
            self.phase, self.phase_epochs, self.epochs_without_improvement, self.switch_epoch = 1, 0, 0, self.epoch
            return "switch"
        self.done = True
        return "stop"


def rng_state() -> dict:
    """Every RNG a trial draws from, as tensors and plain data only (a checkpoint loads with ``weights_only=True``:
    NumPy's state array travels as a tensor)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["position"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


EpochCallback = Callable[[dict, Callable[[], dict]], None]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def fit(
    model: nn.Module,
    train_batches: Callable[[int], Batches],
    test_batches: Callable[[], Batches],
    cfg: TrainConfig,
    device: torch.device,
    num_classes: int,
    on_epoch: EpochCallback | None = None,
    checkpoint: dict | None = None,
    val_batches: Callable[[], Batches] | None = None,
) -> dict:
    """DualOpt: AdamW until ``patience`` epochs without improvement, reload the best weights, then a fresh
    SGD until ``patience`` epochs without beating the best of both phases; each phase capped at
    ``max_epochs``.

    The monitored accuracy is the test split's (``selection=test``, the paper's rule) or a held-out
    ``val_batches()`` split's; test accuracy is measured every epoch in both modes. ``train_batches(epoch)``
    gives the epoch's (shuffled, augmented) batches. After each epoch ``on_epoch(metrics, make_checkpoint)``
    is called; ``make_checkpoint()`` returns one dict (weights last and best, optimizer, scaler, progress,
    RNG states) that ``checkpoint=`` accepts to continue exactly where it was taken. Returns the final
    metrics, with the best epoch's test ``confusion`` and ``predictions`` (see :func:`evaluate`), the
    ``capped`` phases (see :meth:`Progress.advance`) and the ``history``; the model ends with the best
    weights.
    """
    precision = resolve_precision(cfg.precision, device)
    if precision == "fp16" and device.type == "cpu":
        raise RayexpError("fp16 autocast needs a GPU; use --precision bf16 or fp32 on the CPU")
    if cfg.selection == "val" and val_batches is None:
        raise RayexpError("selection=val needs a validation split")
    progress = Progress()
    best_state = copy.deepcopy(model.state_dict())
    if checkpoint is not None:
        progress = Progress(**checkpoint["progress"])
        model.load_state_dict(checkpoint["model"])
        best_state = checkpoint["best_model"]
    optimizer = make_optimizer(model, cfg, progress.phase)
    scaler = make_scaler(device, precision)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])

    def make_checkpoint() -> dict:
        return {
            "model": model.state_dict(),
            "best_model": best_state,
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "progress": asdict(progress),
            "rng": rng_state(),
            "config": asdict(cfg),
        }

    while not progress.done:
        epoch_start = time.perf_counter()
        phase, lr = progress.phase, optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, train_batches(progress.epoch), optimizer, scaler, device, precision)
        test = evaluate(model, test_batches(), device, precision, num_classes)
        val = evaluate(model, val_batches(), device, precision, num_classes) if cfg.selection == "val" else None
        if progress.update((val or test)["acc"], test):
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        metrics = {
            "epoch": progress.epoch,
            "phase": phase,
            "lr": lr,
            "train_loss": train["train_loss"],
            "train_acc": train["train_acc"],
            "test_acc": test["acc"],
            "test_balanced_acc": test["balanced_acc"],
            "test_loss": test["loss"],
            **({"val_acc": val["acc"]} if val else {}),
            "best_acc": progress.best_acc,
            "epochs_without_improvement": progress.epochs_without_improvement,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_images_per_s": train["train_images_per_s"],
            "data_wait_fraction": train["data_wait_fraction"],
            "test_images_per_s": test["images_per_s"],
        }
        if progress.advance(cfg) == "switch":
            model.load_state_dict(best_state)
            optimizer = make_optimizer(model, cfg, phase=1)
            scaler = make_scaler(device, precision)
        progress.history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics, make_checkpoint)
    model.load_state_dict(best_state)
    return {
        "best_test_acc": progress.best_test_acc,
        "best_test_balanced_acc": progress.best_test_balanced_acc,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "switch_epoch": progress.switch_epoch,
        "train_seconds": sum(h["epoch_seconds"] for h in progress.history),
        **({"best_val_acc": progress.best_acc} if cfg.selection == "val" else {}),
        "confusion": progress.best_test_confusion,
        "predictions": progress.best_test_predictions,
        "capped": list(progress.capped),
        "history": progress.history,
    }
