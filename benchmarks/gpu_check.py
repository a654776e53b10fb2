"""rayexp on a GPU, measured: every registry backbone's speed and peak memory at the batch a trial uses, mixed
precision, an exact resume of ``training.fit``, the cached data path's ratio to synthetic batches, and
``torch.compile``.

Imports only the parts of rayexp that need neither Ray nor MLflow (``training``, ``backbones``,
``data.batches``), because the GPU machine this is run on has neither. For each of the eleven backbones, at
the batch a trial uses (the registry's at 256x256; at BreakHis's size the same pixels per batch,
``backbones.specs.batch_size_at``), with the trial's own model (``create_trial_model``: fp32 head,
channels-last), loop (``training.train_one_epoch`` / ``evaluate``) and precision (bf16 autocast on a GPU that
has it; ``--smoke`` on the CPU: fp32):

* training and evaluation images/s, and peak memory (``torch.cuda.max_memory_allocated``), at 256x256 and at
  BreakHis's 448x672. Peak memory is also measured at a quarter and half the batch: with the model, its
  gradients and AdamW's state fixed, the peak is linear in the batch, and the fit gives the largest batch under
  the limit (``--limit-gb``, 72 GB: an A100 80 GB with headroom for the CUDA context, the allocator's
  fragmentation and another card's convolution workspaces; the bytes a model allocates do not depend on the
  card otherwise). Where a trial's batch is over the limit, the largest batch under it (a multiple of 8) is
  measured too. A batch the fit puts over this card's memory is not run (no out-of-memory on purpose);
* fp16 steps through a grad scaler until it takes one (it skips those whose gradients overflow), and a bf16
  step: a step taken, its loss and every weight finite;
* the cached data path, at 256x256: decoded uint8 images in memory, shuffled and TrivialAugmentWide-augmented
  in ``--threads`` threads (10; a trial on a GPU node has 12 once cached: its 2 CPUs and 10 data CPUs), copied
  to the device, normalised there (``data.batches.TrialBatches``, a cached trial's batches), against the same
  loop over synthetic batches already on the device; the ratio real/synthetic, per backbone (target at least
  0.90);
* ``torch.compile`` for ResNet-50, ConvNeXt-T and Swin-T (its compile time and speed-up over eager; last, as
  the time budget allows);
* an exact resume: a small ``training.fit`` run whole twice and once stopped after its second epoch and
  resumed from that epoch's checkpoint (serialised as a trial's is); the largest difference in any epoch's
  loss or accuracy, resumed vs whole and whole vs whole (cuDNN's non-determinism, for comparison).

Writes ``gpu_check.json`` (after every part, so a run cut short keeps what it measured) and ``gpu_check.md``
to ``--out``, and prints ``ratio ...`` lines last. Budgeted to about 8 minutes on one H200 (``--budget-s``);
``--smoke`` runs every part at tiny sizes on the CPU in seconds (``tests/test_gpu_check.py``).

On the GPU machine (no Ray, MLflow or network there; PyWavelets, for WaveMix, travels as a wheel)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 -d .whl pywavelets==1.9.0          # here, once
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl   # there
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT"   # there

Here: ``python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check``.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from rayexp.backbones import create_trial_model, list_backbones
from rayexp.backbones.specs import batch_size_at
from rayexp.data.batches import Normalizer, TrialBatches
from rayexp.data.catalog import BREAKHIS_SIZE
from rayexp.training import (
    TrainConfig,
    autocast,
    evaluate,
    fit,
    make_optimizer,
    make_scaler,
    resolve_precision,
    train_one_epoch,
)

GB = 1e9
CLASSES = 10
COMPILED = ("resnet50", "convnext_tiny", "swin_t")
PARTS = ["backbones", "resume", "compile"]
RESUME_BACKBONE = "mobilenet_v3_large"  # BatchNorm and dropout: the device's RNG state must come back too
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
WORKER_CPUS = 2  # torch's own threads: what Ray gives a trial's worker on a GPU node (OMP_NUM_THREADS)


@dataclass(frozen=True)
class Plan:
    """Sizes and lengths of one run: the GPU's, or ``--smoke``'s on the CPU."""

    sizes: dict[str, tuple[int, int]]  # label -> (H, W)
    batch: dict[str, dict[str, int]]  # backbone -> size label -> the batch a trial trains with there (smoke: 4)
    seconds: float  # timed training per backbone and size, after the warm-up
    max_steps: int
    warmup: int
    eval_batches: int
    data_steps: int  # training steps of the data-path arm (and images: data_steps x batch)
    threads: int
    precision_batch: int
    precision_tries: int  # fp16 steps until the grad scaler takes one
    min_batch: int  # the smallest batch worth measuring under the memory limit
    memory_steps: int  # training steps whose peak memory is read, at a quarter and half the batch
    compile_backend: str
    resume_size: int
    resume_images: int
    resume_batch: int


def full_plan(threads: int, backbones: list[str]) -> Plan:
    sizes = {"256x256": (256, 256), "breakhis": tuple(BREAKHIS_SIZE)}
    registry = {spec.name: spec.batch_size for spec in list_backbones()}
    return Plan(
        sizes=sizes,
        batch={
            name: {label: batch_size_at(registry[name], size) for label, size in sizes.items()} for name in backbones
        },
        seconds=2.0,
        max_steps=12,
        warmup=3,
        eval_batches=4,
        data_steps=12,
        threads=threads,
        precision_batch=8,
        precision_tries=8,
        min_batch=8,
        memory_steps=2,  # the second step holds AdamW's state too
        compile_backend="inductor",
        resume_size=64,
        resume_images=256,
        resume_batch=32,
    )


def smoke_plan(backbones: list[str]) -> Plan:
    return Plan(
        sizes={"256x256": (32, 32), "breakhis": (32, 64)},
        batch={name: {"256x256": 4, "breakhis": 4} for name in backbones},
        seconds=0.0,
        max_steps=1,
        warmup=1,
        eval_batches=1,
        data_steps=2,
        threads=2,
        precision_batch=2,
        precision_tries=1,
        min_batch=2,
        memory_steps=1,  # fp16 runs on the CPU, but slowly: the code path, not the numbers
        compile_backend="eager",  # Dynamo's capture of the trial's model, without minutes of C++ compiling
        resume_size=32,
        resume_images=24,
        resume_batch=8,
    )


@dataclass
class MemoryFit:
    """Peak memory as ``static + per_image * batch``, from two measured batches."""

    static: float
    per_image: float

    @classmethod
    def through(cls, a: tuple[int, float], b: tuple[int, float]) -> "MemoryFit":
        (batch_a, peak_a), (batch_b, peak_b) = sorted((a, b))
        per_image = max(0.0, (peak_b - peak_a) / (batch_b - batch_a))
        return cls(static=peak_a - per_image * batch_a, per_image=per_image)

    def peak(self, batch: int) -> float:
        return self.static + self.per_image * batch

    def largest_batch(self, limit: float, multiple: int = 8) -> int:
        """The largest multiple of ``multiple`` whose predicted peak is at most ``limit`` (0 if none)."""
        if self.per_image <= 0:
            return 0 if self.static > limit else 1 << 16
        return max(0, int((limit - self.static) / self.per_image) // multiple * multiple)


CLEAR_REFS, STATUS, MEMINFO = Path("/proc/self/clear_refs"), Path("/proc/self/status"), Path("/proc/meminfo")


def _proc_bytes(path: Path, field: str) -> float:
    """A ``kB`` field of a Linux ``/proc`` file, in bytes."""
    (line,) = [line for line in path.read_text().splitlines() if line.startswith(field + ":")]
    return float(line.split()[1]) * 1024


@dataclass
class Device:
    """Where the check runs, and how its peak memory is read: ``cuda``, the card's allocator
    (``max_memory_allocated``); ``rss``, this process's peak resident set (Linux's ``VmHWM``, reset through
    ``clear_refs``): the CPU smoke run's stand-in, so that the memory fit and its decisions run there too (its
    numbers are the whole process's, not a model's); ``""``, none."""

    device: torch.device
    precision: str
    memory: str

    @classmethod
    def open(cls, cuda: bool) -> "Device":
        if cuda:
            return cls(torch.device("cuda"), resolve_precision("auto", torch.device("cuda")), "cuda")
        try:
            CLEAR_REFS.write_text("5")
            memory = "rss"
        except OSError:  # not Linux, or not allowed
            memory = ""
        return cls(torch.device("cpu"), resolve_precision("auto", torch.device("cpu")), memory)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def capacity(self) -> float:
        """Bytes the card (or this machine) has; 0 when memory is not measured."""
        if self.memory == "cuda":
            return float(torch.cuda.get_device_properties(self.device).total_memory)
        return _proc_bytes(MEMINFO, "MemTotal") if self.memory == "rss" else 0.0

    def reset_peak(self) -> None:
        if self.memory == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.memory == "rss":
            CLEAR_REFS.write_text("5")

    def peak(self) -> float | None:
        if self.memory == "cuda":
            torch.cuda.synchronize(self.device)
            return float(torch.cuda.max_memory_allocated(self.device))
        return _proc_bytes(STATUS, "VmHWM") if self.memory == "rss" else None

    def peak_reserved(self) -> float | None:
        return float(torch.cuda.max_memory_reserved(self.device)) if self.memory == "cuda" else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def synthetic(
    batch: int, size: tuple[int, int], device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised, channels-last batch already on the device (drawn there): the ceiling the data path is held
    against."""
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=generator, device=device)
    labels = torch.randint(0, CLASSES, (batch,), generator=generator, device=device)
    return images.contiguous(memory_format=torch.channels_last), labels


class Trainer:
    """One backbone's model and optimizer, kept across measurements (AdamW's state allocated once)."""

    def __init__(self, name: str, dev: Device, compile_backend: str | None = None) -> None:
        self.name, self.dev = name, dev
        self.model = create_trial_model(name, CLASSES, seed=0, device=dev.device, pretrained=False)
        if compile_backend:
            self.model.compile(backend=compile_backend)
        self.optimizer = make_optimizer(self.model, TrainConfig())
        self.scaler = make_scaler(dev.device, dev.precision)

    def steps(self, batch: tuple[torch.Tensor, torch.Tensor], n: int) -> dict:
        return train_one_epoch(
            self.model, [batch] * n, self.optimizer, self.scaler, self.dev.device, self.dev.precision
        )

    def peak_at(self, batch_size: int, size: tuple[int, int], steps: int) -> float | None:
        """Peak bytes over ``steps`` training steps at ``batch_size``."""
        batch = synthetic(batch_size, size, self.dev.device)
        self.dev.reset_peak()
        self.steps(batch, steps)
        del batch
        return self.dev.peak()

    def timed(self, batch_size: int, size: tuple[int, int], plan: Plan, evaluation: bool = True) -> dict:
        """Training images/s over ``plan.seconds`` (at least 2 steps, at most ``plan.max_steps``) after the
        warm-up, evaluation images/s (unless not ``evaluation``), and the peak memory of both."""
        batch = synthetic(batch_size, size, self.dev.device)
        self.dev.reset_peak()
        if plan.warmup > 1:
            self.steps(batch, plan.warmup - 1)
        step_s = self.steps(batch, 1)["train_seconds"]  # the last warm-up step, once the first calls' set-up is paid
        n = max(2 if plan.seconds else 1, min(plan.max_steps, math.ceil(plan.seconds / max(step_s, 1e-6))))
        train = self.steps(batch, n)
        test = {}
        if evaluation:
            evaluate(self.model, [batch], self.dev.device, self.dev.precision, CLASSES)  # warm-up
            test = evaluate(self.model, [batch] * plan.eval_batches, self.dev.device, self.dev.precision, CLASSES)
        del batch
        return {
            "batch": batch_size,
            "train_images_per_s": train["train_images_per_s"],
            "train_steps": n,
            "eval_images_per_s": test.get("images_per_s"),
            "peak_bytes": self.dev.peak(),
            "peak_reserved_bytes": self.dev.peak_reserved(),
            "train_loss": train["train_loss"],
        }

    def close(self) -> None:
        del self.model, self.optimizer, self.scaler
        self.dev.free()


def measure_size(trainer: Trainer, batch: int, size: tuple[int, int], plan: Plan, limit: float) -> dict:
    """Speed and memory of one backbone at one input size; see the module's docstring."""
    dev = trainer.dev
    out: dict = {"size": list(size), "batch": batch}
    fit_ = None
    if dev.memory:
        quarter, half = max(2, batch // 4), max(4, batch // 2)
        peaks = [(b, trainer.peak_at(b, size, plan.memory_steps)) for b in (quarter, half)]
        fit_ = MemoryFit.through(*peaks)
        out["memory_fit"] = {"static_bytes": fit_.static, "bytes_per_image": fit_.per_image}
        out["predicted_peak_bytes"] = fit_.peak(batch)
        out["largest_batch_under_limit"] = fit_.largest_batch(limit)
    if fit_ is None or fit_.peak(batch) <= 0.9 * dev.capacity:
        out["measured"] = trainer.timed(batch, size, plan)
    else:
        out["measured"] = None
        out["skipped"] = f"predicted peak {fit_.peak(batch) / GB:.1f} GB is over 90% of this card's memory"
    peak = (out["measured"] or {}).get("peak_bytes")
    if dev.memory:
        out["fits_limit"] = peak is not None and peak <= limit
        smaller = min(batch, out["largest_batch_under_limit"])
        if not out["fits_limit"] and smaller >= plan.min_batch:
            out["at_largest_batch_under_limit"] = trainer.timed(smaller, size, plan)
    return out


def precision_steps(trainer: Trainer, size: tuple[int, int], plan: Plan) -> dict:
    """fp16 through a fresh grad scaler, then bf16, on the backbone's model and a batch it has not seen: steps until
    one is taken (the scaler skips a step whose gradients overflowed, and halves its scale: expected at first),
    at most ``plan.precision_tries``; ``ok`` when a step was taken, its loss finite and every weight finite after it."""
    dev, model, out = trainer.dev, trainer.model, {}
    images, labels = synthetic(plan.precision_batch, size, dev.device, seed=1)
    model.train()
    for precision in ("fp16", "bf16"):
        scaler = make_scaler(dev.device, precision)
        losses, skipped, taken = [], 0, False
        while not taken and len(losses) < plan.precision_tries:
            with autocast(dev.device, precision):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            trainer.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            before = scaler.get_scale() if scaler.is_enabled() else None
            scaler.step(trainer.optimizer)
            scaler.update()
            taken = before is None or scaler.get_scale() >= before
            skipped += not taken
            losses.append(float(loss.detach()))
        weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        out[precision] = {
            "losses": losses,
            "skipped_by_scaler": skipped,
            "scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
            "ok": taken and math.isfinite(losses[-1]) and weights_finite,
        }
    return out


def data_path(trainer: Trainer, batch: int, size: tuple[int, int], plan: Plan, pool: torch.Tensor) -> dict:
    """Images/s of the same training loop fed by a cached trial's batches vs by synthetic batches on the device."""
    n = min(len(pool), plan.data_steps * batch)
    images, labels = pool[:n], torch.arange(n) % CLASSES
    dev = trainer.dev
    batches = TrialBatches.in_memory(
        {"train": (images, labels, torch.arange(n))},
        batch_size=batch,
        seed=0,
        normalize=Normalizer(MEAN, STD, dev.device),
        augment=True,
        threads=plan.threads,
    )
    ready = synthetic(batch, size, dev.device)
    trainer.steps(ready, plan.warmup)
    fake = trainer.steps(ready, max(1, n // batch))
    del ready
    real = train_one_epoch(
        trainer.model, batches.train(1), trainer.optimizer, trainer.scaler, dev.device, dev.precision
    )
    return {
        "batch": batch,
        "images": real["train_images"],
        "threads": plan.threads,
        "real_images_per_s": real["train_images_per_s"],
        "synthetic_images_per_s": fake["train_images_per_s"],
        "ratio": real["train_images_per_s"] / fake["train_images_per_s"],
        "data_wait_fraction": real["data_wait_fraction"],
    }


def one_backbone(name: str, plan: Plan, dev: Device, pool: torch.Tensor, limit: float) -> dict:
    """Every measurement of one backbone, on one model: both sizes, the data path, the mixed-precision steps."""
    trainer = Trainer(name, dev)
    row: dict = {"sizes": {}}
    for label, size in plan.sizes.items():
        batch = plan.batch[name][label]
        row["sizes"][label] = measure_size(trainer, batch, size, plan, limit)
        if label == "256x256":
            row["data_path"] = data_path(trainer, batch, size, plan, pool)
    row["precision_steps"] = precision_steps(trainer, plan.sizes["256x256"], plan)
    trainer.close()
    return row


def exact_resume(dev: Device, plan: Plan) -> dict:
    """``training.fit`` whole (twice) vs stopped after epoch 2 and resumed from that epoch's checkpoint."""
    n, size = plan.resume_images, (plan.resume_size, plan.resume_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, *size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % 4
    cut = n * 3 // 4
    batches = TrialBatches.in_memory(
        {
            "train": (images[:cut], labels[:cut], torch.arange(cut)),
            "test": (images[cut:], labels[cut:], torch.arange(n - cut)),
        },
        batch_size=plan.resume_batch,
        seed=0,
        normalize=Normalizer(MEAN, STD, dev.device),
        augment=True,
        threads=plan.threads,
    )
    cfg = TrainConfig(max_epochs=2, patience=1, precision=dev.precision, seed=0)

    class Stop(Exception):
        pass

    def run(stop_after: int | None = None, checkpoint: dict | None = None) -> tuple[list[dict], bytes | None]:
        model = create_trial_model(RESUME_BACKBONE, 4, seed=0, device=dev.device, pretrained=False)
        saved: list[bytes] = []

        def on_epoch(metrics: dict, make_checkpoint) -> None:
            if metrics["epoch"] == stop_after:
                buffer = io.BytesIO()
                torch.save(make_checkpoint(), buffer)  # as a trial's checkpoint is written and read back
                saved.append(buffer.getvalue())
                raise Stop

        try:
            final = fit(model, batches.train, batches.evaluation("test"), cfg, dev.device, 4, on_epoch, checkpoint)
        except Stop:
            return [], saved[0]
        return final["history"], None

    whole, _ = run()
    again, _ = run()
    _, blob = run(stop_after=2)
    state = torch.load(io.BytesIO(blob), map_location=dev.device, weights_only=True)
    resumed, _ = run(checkpoint=state)
    keys = ("train_loss", "train_acc", "test_acc", "test_loss")

    def largest_difference(a: list[dict], b: list[dict]) -> float:
        if [h["epoch"] for h in a] != [h["epoch"] for h in b]:
            return math.inf
        return max((abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys), default=0.0)

    return {
        "backbone": RESUME_BACKBONE,
        "epochs": len(whole),
        "resumed_after_epoch": 2,
        "resumed_vs_whole": largest_difference(whole, resumed),  # a resumed fit's history has the epochs before
        "whole_vs_whole": largest_difference(whole, again),
        "exact": largest_difference(whole, resumed) == 0.0,
    }


def compiled(name: str, batch: int, size: tuple[int, int], dev: Device, plan: Plan, eager: float | None) -> dict:
    """Compile time (the first step) and training images/s of the compiled trial model, against eager's (measured
    here when this run's backbone part did not)."""
    if eager is None:
        trainer = Trainer(name, dev)
        eager = trainer.timed(batch, size, plan, evaluation=False)["train_images_per_s"]
        trainer.close()
    start = time.perf_counter()
    trainer = Trainer(name, dev, compile_backend=plan.compile_backend)
    trainer.steps(synthetic(batch, size, dev.device), 1)  # compiles
    compile_s = time.perf_counter() - start
    measured = trainer.timed(batch, size, plan, evaluation=False)  # evaluating would compile a second graph
    trainer.close()
    return {
        "backend": plan.compile_backend,
        "compile_seconds": compile_s,
        "train_images_per_s": measured["train_images_per_s"],
        "eager_images_per_s": eager,
        "speedup": measured["train_images_per_s"] / eager,
    }


def environment(dev: Device) -> dict:
    import torchvision

    out = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": torch.cuda.get_device_name(dev.device) if dev.cuda else f"CPU ({os.cpu_count()} cores)",
        "memory_bytes": dev.capacity or None,
        "memory_measured": {"cuda": "torch.cuda.max_memory_allocated", "rss": "peak RSS (VmHWM) of the process"}.get(
            dev.memory
        ),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if dev.cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "precision": dev.precision,
        "cpus": os.cpu_count(),
    }
    return out


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value / GB:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _table(title: str, columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown section: its title and a table of ``rows`` (nothing when there are none)."""
    if not rows:
        return []
    return [
        "",
        f"## {title}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def _size_row(name: str, m: dict) -> list:
    measured, at = m.get("measured") or {}, m.get("at_largest_batch_under_limit")
    peak = _gb(measured.get("peak_bytes")) if measured else f"{_gb(m.get('predicted_peak_bytes'))} (predicted)"
    return [
        name,
        "x".join(map(str, m["size"])),
        m["batch"],
        _rate(measured.get("train_images_per_s")),
        _rate(measured.get("eval_images_per_s")),
        peak,
        {None: "-", True: "yes", False: "**no**"}[m.get("fits_limit")],
        m.get("largest_batch_under_limit", "-"),
        f"{at['batch']}: {_gb(at['peak_bytes'])}, {_rate(at['train_images_per_s'])}" if at else "-",
    ]


def _precision_row(name: str, steps: dict) -> list:
    fp16, bf16 = steps["fp16"], steps["bf16"]
    return [name, fp16["ok"], f"{fp16['losses'][-1]:.3f}", fp16["skipped_by_scaler"], f"{fp16['scale']:g}"] + [
        bf16["ok"],
        f"{bf16['losses'][-1]:.3f}",
    ]


def _data_row(name: str, d: dict) -> list:
    real, fake = _rate(d["real_images_per_s"]), _rate(d["synthetic_images_per_s"])
    return [name, d["batch"], real, fake, f"{d['ratio']:.2f}", f"{d['data_wait_fraction']:.0%}"]


def _compile_row(name: str, c: dict) -> list:
    if "speedup" not in c:
        return [name, c.get("skipped") or c.get("error"), "", "", ""]
    eager, compiled = _rate(c["eager_images_per_s"]), _rate(c["train_images_per_s"])
    return [name, f"{c['compile_seconds']:.0f}", eager, compiled, f"{c['speedup']:.2f}"]


def markdown(result: dict) -> str:
    env, limit, rows = result["environment"], result["limit_bytes"], result["backbones"]
    lines = [
        f"# rayexp on {env['device']}",
        "",
        f"`benchmarks/gpu_check.py`{' --smoke' if result['smoke'] else ''}, {env['date']}: torch {env['torch']}, "
        f"torchvision {env['torchvision']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Python {env['python']}; "
        f"{env['precision']} (the trial's precision on this device), channels-last, the trial's model (fp32 head) "
        "and loop; random weights. "
        f"Peak: {env['memory_measured'] or 'not measured'} over training and evaluation, GB = 10^9 bytes; limit "
        f"{limit / GB:.0f} GB (an A100 80 GB with headroom).",
    ]
    lines += _table(
        "Speed and peak memory at the batch a trial uses",
        ["backbone", "size", "batch", "train img/s", "eval img/s", "peak GB", "fits", "largest batch under the limit"]
        + ["at that batch: peak GB, train img/s"],
        [_size_row(name, m) for name, row in rows.items() for m in row.get("sizes", {}).values()],
    )
    lines += _table(
        "Mixed precision: a step taken in fp16 (grad scaler) and in bf16",
        ["backbone", "fp16 ok", "fp16 loss", "steps the scaler skipped", "scale", "bf16 ok", "bf16 loss"],
        [_precision_row(name, row["precision_steps"]) for name, row in rows.items() if "precision_steps" in row],
    )
    lines += _table(
        "The cached data path vs synthetic batches on the device",
        ["backbone", "batch", "real img/s", "synthetic img/s", "ratio", "data wait"],
        [_data_row(name, row["data_path"]) for name, row in rows.items() if "data_path" in row],
    )
    lines += _table(
        "torch.compile",
        ["backbone", "compile s", "eager img/s", "compiled img/s", "speed-up"],
        [_compile_row(name, c) for name, c in result["compile"].items()],
    )
    if "error" not in result.get("resume", {"error": ""}):
        r = result["resume"]
        lines += [
            "",
            "## Exact resume",
            "",
            f"`training.fit` on {r['backbone']} ({r['epochs']} epochs), stopped after epoch {r['resumed_after_epoch']} "
            f"and resumed from its checkpoint: largest difference in an epoch's loss or accuracy, resumed vs whole "
            f"**{r['resumed_vs_whole']:.3g}**; whole vs whole (the device's own non-determinism) "
            f"{r['whole_vs_whole']:.3g}.",
        ]
    errors = errors_of(result)
    if errors:
        lines += ["", "## Errors", ""] + [f"- {part}: {message}" for part, message in errors.items()]
    lines += ["", f"Parts' seconds: {json.dumps({k: round(v, 1) for k, v in result['seconds'].items()})}", ""]
    return "\n".join(lines)


def errors_of(result: dict) -> dict[str, str]:
    """Each part that failed, and its error."""
    parts = {**result["backbones"], **{f"compile {k}": v for k, v in result["compile"].items()}}
    if "resume" in result:
        parts["resume"] = result["resume"]
    return {part: value["error"] for part, value in parts.items() if "error" in value}


def ratio_lines(result: dict) -> list[str]:
    rows = {name: row["data_path"]["ratio"] for name, row in result["backbones"].items() if "data_path" in row}
    lines = [f"ratio data_path_real_vs_synthetic {name} {value:.3f}" for name, value in rows.items()]
    lines += [
        f"ratio compile_speedup {name} {c['speedup']:.3f}" for name, c in result["compile"].items() if "speedup" in c
    ]
    if rows:
        lines.append(f"ratio data_path_real_vs_synthetic_min {min(rows.values()):.3f}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: every part, in seconds")
    names = [s.name for s in list_backbones()]
    p.add_argument("--backbones", nargs="+", default=names, choices=names, metavar="NAME", help="default: all eleven")
    p.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS, help="to rerun what a run cut short")
    p.add_argument("--threads", type=int, default=10, help="augmentation threads of the data path")
    p.add_argument("--limit-gb", type=float, default=72.0)
    p.add_argument("--budget-s", type=float, default=480.0, help="compile is skipped for what would pass this")
    p.add_argument("--compile-s", type=float, default=100.0, help="what one compile is budgeted")
    args = p.parse_args(argv)
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        p.error("no CUDA device: run it on a GPU, or with --smoke on the CPU")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} is a file: name a folder (created if missing)")
    dev = Device.open(cuda)  # the trial's precision: bf16 on an H100/H200/A100; fp32 on the CPU
    plan = smoke_plan(args.backbones) if args.smoke else full_plan(args.threads, args.backbones)
    if cuda:
        torch.set_num_threads(WORKER_CPUS)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "smoke": args.smoke,
        "environment": environment(dev),
        "limit_bytes": args.limit_gb * GB,
        "plan": {**plan.__dict__, "sizes": {k: list(v) for k, v in plan.sizes.items()}},
        "backbones": {},
        "compile": {},
        "seconds": {},
    }

    def save() -> None:
        for name, text in (
            ("gpu_check.json", json.dumps(result, indent=1, default=str)),
            ("gpu_check.md", markdown(result)),
        ):
            partial = args.out / f".{name}.{os.getpid()}.partial"  # whole files only, even with a run beside it
            partial.write_text(text)
            os.replace(partial, args.out / name)

    def attempt(part: str, fn, *a) -> dict:
        """``fn(*a)``, timed; an error (an out-of-memory, a compile failure) is recorded as the part's result and
        the run goes on to the next part, so that one failure does not cost the others' measurements."""
        start = time.perf_counter()
        try:
            value = fn(*a)
        except Exception as exc:  # noqa: BLE001 (recorded, printed, and the exit status says so)
            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"}
        dev.free()
        result["seconds"][part] = time.perf_counter() - start
        print(f"# {part}: {result['seconds'][part]:.1f} s (total {time.perf_counter() - started:.0f} s)", flush=True)
        return value

    print(f"# {result['environment']['device']}, torch {torch.__version__}, {dev.precision}", flush=True)
    if "backbones" in args.parts:
        size = plan.sizes["256x256"]
        pool_n = max(plan.data_steps * b["256x256"] for b in plan.batch.values())
        pool = torch.randint(0, 256, (pool_n, *size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        for name in args.backbones:
            result["backbones"][name] = attempt(name, one_backbone, name, plan, dev, pool, args.limit_gb * GB)
            save()
            m = result["backbones"][name].get("sizes", {}).get("256x256", {}).get("measured") or {}
            print(
                f"  {name}: {_rate(m.get('train_images_per_s'))} img/s, peak {_gb(m.get('peak_bytes'))} GB", flush=True
            )
        del pool
    if "resume" in args.parts:
        result["resume"] = attempt("resume", exact_resume, dev, plan)
        save()
    if "compile" in args.parts:
        for name in [n for n in COMPILED if n in args.backbones]:
            sizes = result["backbones"].get(name, {}).get("sizes", {})
            eager = (sizes.get("256x256", {}).get("measured") or {}).get("train_images_per_s")
            left = args.budget_s - (time.perf_counter() - started)
            if not args.smoke and left < args.compile_s:
                result["compile"][name] = {"skipped": f"{left:.0f} s left of the budget"}
                continue
            result["compile"][name] = attempt(
                f"compile {name}", compiled, name, plan.batch[name]["256x256"], plan.sizes["256x256"], dev, plan, eager
            )
            save()
    result["seconds"]["total"] = time.perf_counter() - started
    save()
    print(markdown(result))
    for line in ratio_lines(result):
        print(line)
    return result


if __name__ == "__main__":
    sys.exit(1 if errors_of(main()) else 0)
