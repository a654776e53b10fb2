"""Checks that run before any trial starts, so that no GPU time is spent on a sweep that cannot finish.

Each check returns every problem it finds (not just the first) with the command that fixes it; a
:class:`Problems` gathers them all, so that one error lists everything wrong at once: missing datasets
with the command that prepares each, and missing weights, and the tracking store, together.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from rayexp import tracking
from rayexp.backbones import get_spec
from rayexp.backbones.checkpoint import file_sha256, read_checkpoint
from rayexp.backbones.factory import check_checkpoint
from rayexp.backbones.footprint import GB, footprint, trial_memory, trial_precision
from rayexp.backbones.specs import REGISTRY_INPUT
from rayexp.backbones.weights import OFFLINE_ENV, WeightsStatus, weights_status
from rayexp.cluster_shape import trial_cpus
from rayexp.data.preparation import how_to_prepare
from rayexp.data.rows import fraction_thresholds
from rayexp.data.shards import dataset_location, is_prepared, is_uri, load_manifest, verify_dataset
from rayexp.errors import RayexpError
from rayexp.settings import SweepSettings

DATASETS = "datasets missing or not as prepared, nothing was started"
INPUT_SIZES = "input sizes the backbones cannot take"
SELECTION = "selection=val needs a validation row in every class"
WEIGHTS = "weights cannot be had or do not fit, nothing was started"
STORE = "the MLflow tracking store cannot be used"
MEMORY = "trials that cannot fit the memory they would run in, nothing was started"
LOCATIONS = "folders that cannot be written"
_STARTED = ", nothing was started"


class Problems:
    """Every problem the preflight finds, by check, raised together as one :class:`RayexpError`."""

    def __init__(self) -> None:
        self.sections: dict[str, tuple[list[str], str]] = {}

    def add(self, title: str, problems: Sequence[str], advice: str = "") -> None:
        """``problems`` (one text each; continuation lines indented by the caller) under ``title``."""
        if problems:
            found, _ = self.sections.setdefault(title, ([], advice))
            found.extend(problems)

    def attempt(self, title: str, check: Callable, *args):
        """``check(*args)``; a :class:`RayexpError` it raises is recorded under ``title`` (result None)."""
        try:
            return check(*args)
        except RayexpError as exc:
            self.add(title, [str(exc)])
            return None

    def __bool__(self) -> bool:
        return bool(self.sections)

    def message(self) -> str:
        """One check's problems as that check words them; several checks' under one heading."""
        several = len(self.sections) > 1
        parts = []
        for title, (found, advice) in self.sections.items():
            title = title.removesuffix(_STARTED) if several else title
            parts.append(f"{title}:\n" + "\n".join(f"  - {p}" for p in found) + (f"\n  {advice}" if advice else ""))
        head = f"{sum(len(f) for f, _ in self.sections.values())} problems found{_STARTED}:\n" if several else ""
        return head + "\n".join(parts)

    def raise_if_any(self) -> None:
        if self.sections:
            raise RayexpError(self.message())


def missing_dataset(name: str, data_dir: str) -> str:
    """What to say about catalog dataset ``name``, not prepared in ``data_dir``: the command that prepares it
    (with --download where the catalog can download it) and, for a manual one, what to fetch and from where."""
    command, fetch = how_to_prepare(name, data_dir)
    if not fetch:
        return f"{name}: not prepared in {data_dir}; run: {command}"
    return f"{name}: not prepared in {data_dir}; fetch it by hand, then run: {command}\n      PATH: {fetch}"


def dataset_problems(datasets: Sequence[str], data_dir: str) -> tuple[dict[str, dict], list[str]]:
    """The manifests of the prepared ``datasets``, each checked against its shards (:func:`verify_dataset`:
    every file's size and sha256, per-class counts, labels in range), and every unprepared, inconsistent or
    modified dataset with the command that fixes it."""
    manifests, problems = {}, []
    for name in datasets:
        if not is_prepared(data_dir, name):
            try:
                problems.append(missing_dataset(name, data_dir))
            except RayexpError as exc:  # an unknown name, or a source without a converter
                problems.append(str(exc))
            continue
        try:
            manifest = load_manifest(data_dir, name)
            start = time.perf_counter()
            verify_dataset(dataset_location(data_dir, name), manifest)
            size = sum(b for meta in manifest["splits"].values() for b in meta["bytes"].values())
            print(
                f"[rayexp] {name}: {size / 1e6:.1f} MB of shards verified in {time.perf_counter() - start:.1f}s",
                flush=True,
            )
        except RayexpError as exc:
            problems.append(str(exc))
            continue
        manifests[name] = manifest
    return manifests, problems


def input_size_problems(backbones: Sequence[str], manifests: dict[str, dict]) -> list[str]:
    """Every (backbone, dataset) whose training resolution the backbone cannot take, with the fix."""
    problems = []
    for backbone in backbones:
        spec = get_spec(backbone)
        if spec.fixed_input:  # resized to its one size inside the model: see input_size_notes
            continue
        m = spec.multiple_of
        for name, manifest in manifests.items():
            h, w = manifest["input_size"]
            if min(h, w) < spec.min_input or h % m or w % m:
                multiples = f", both multiples of {m}" if m > 1 else ""
                problems.append(
                    f"{backbone} cannot train on {name} at {h}x{w} (smallest side {spec.min_input}{multiples}); "
                    "fix: leave it out of --backbones for this dataset, or prepare the data at a size it takes "
                    "(my_data.py --input-size)"
                )
    return problems


def input_size_notes(backbones: Sequence[str], manifests: dict[str, dict]) -> list[str]:
    """Backbones that take one input size only (torchvision's ViTs, timm models without a dynamic size) and the
    datasets whose images they will see resized to it."""
    notes = []
    for backbone in backbones:
        fixed = get_spec(backbone).fixed_input
        other = sorted(n for n, m in manifests.items() if fixed and tuple(m["input_size"]) != tuple(fixed))
        if other:
            notes.append(
                f"{backbone} takes {fixed[0]}x{fixed[1]} inputs only: its images of {', '.join(other)} are resized "
                "to that inside the model (its position embeddings are fixed)"
            )
    return notes


def batch_size_notes(settings: SweepSettings, manifests: dict[str, dict]) -> list[str]:
    """The datasets whose images are larger than the registry's batches are for, and each backbone's batch there
    (:func:`rayexp.backbones.specs.batch_size_at`); none with ``--batch-size``, which holds everywhere."""
    if settings.batch_size:
        return []
    notes = []
    for name, manifest in sorted(manifests.items()):
        size = tuple(manifest["input_size"])
        batches = {b: settings.batch_size_for(b, size) for b in settings.backbones}
        if any(batch != get_spec(b).batch_size for b, batch in batches.items()):
            pairs = ", ".join(f"{b} {get_spec(b).batch_size} -> {batch}" for b, batch in batches.items())
            notes.append(
                f"{name} trains at {size[0]}x{size[1]}, more pixels than the {REGISTRY_INPUT[0]}x{REGISTRY_INPUT[1]} "
                f"the default batches are for: the same pixels per batch instead ({pairs})"
            )
    return notes


# A trial's memory and CPU time, from its model counted on the meta device (rayexp.backbones.footprint).

# What one CPU thread computes per second training a dense network in fp32, measured on a 2-core AMD EPYC VM
# (one thread, a training step with AdamW): ResNet-18/50, ConvNeXt-T and ViT-B/16 47-62 GFLOP/s, EfficientNet-V2-S
# 45, DenseNet-161 39, MobileNet-V3 and EfficientNet-Lite0 19-21, tiny 32x32 inputs 4. The dense figure makes the
# time a floor on such a CPU: most networks take longer than said (a core with AVX-512 or AMX can take less).
CPU_FLOPS_PER_THREAD = 50e9
LONG_TRIAL_HOURS = 1.0  # a CPU trial at least this long is announced before the sweep starts
# GPU memory by Ray's accelerator type (--accelerator-type), in MiB as nvidia-smi reports it; the types whose
# memory varies by model (A100, V100) are not listed, and are not checked before Ray starts.
GPU_MEMORY_MIB = {
    "A100-40G": 40960,
    "A100-80G": 81920,
    "H100": 81559,
    "H200": 143771,
    "L4": 23034,
    "L40S": 46068,
    "A10G": 23028,
    "T4": 15360,
}
MEMORY_ADVICE = (
    "each estimate is a floor: weights, gradients, AdamW's moments and the best epoch's copy (20 bytes per parameter) "
    "plus the activations autograd keeps, counted on PyTorch's meta device (rayexp/backbones/footprint.py)"
)


@dataclass(frozen=True)
class TrialNode:
    """What one trial of the sweep gets, as far as the preflight can tell before Ray starts."""

    gpu: bool
    memory: float  # bytes: one GPU's memory (its --gpus-per-trial share), or the machine's memory
    where: str  # in words, e.g. "this machine's 24.6 GB of memory"
    threads: int = 1  # the CPU threads a CPU trial trains with (Ray's OMP_NUM_THREADS: its worker CPUs, at least 1)
    at_once: int = 1  # CPU trials that can run at once on the machine, each in its own worker, sharing its memory


def host_memory() -> float:
    """This machine's memory in bytes, or its cgroup's limit (a container's) where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return float(total)


def visible_gpu_memory(listing: str, visible: str | None) -> list[float]:
    """Each GPU's memory in bytes, from ``nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,
    nounits``, of the GPUs ``CUDA_VISIBLE_DEVICES`` (``visible``: indices or UUID prefixes) leaves visible."""
    rows = [[cell.strip() for cell in line.split(",")] for line in listing.splitlines() if line.strip()]
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        rows = [r for r in rows if len(r) == 3 and any(w == r[0] or r[1].startswith(w) for w in wanted)]
    return [float(r[2]) * 2**20 for r in rows if len(r) == 3 and r[2].isdigit()]


def local_gpu_memory() -> list[float]:
    """The memory of each GPU this machine's trials would see, from nvidia-smi (which, unlike asking CUDA, leaves
    this process without a CUDA context); none without nvidia-smi."""
    query = ["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"]
    try:
        listing = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return visible_gpu_memory(listing, os.environ.get("CUDA_VISIBLE_DEVICES"))


def trial_node(settings: SweepSettings) -> tuple[TrialNode | None, str]:
    """What a trial of this sweep will have, as Ray will place it: a GPU where the trials take one (the memory of
    ``--accelerator-type``'s, or of this machine's smallest GPU), else this machine's memory; ``(None, why not)``
    where it cannot be known before Ray starts (a cluster's nodes)."""
    if settings.device != "cpu":
        share = min(1.0, settings.gpus_per_trial)  # trials of a fraction of a GPU share its memory
        of = f"{share:g} of " if share < 1 else ""
        mib = GPU_MEMORY_MIB.get(settings.accelerator_type or "")
        if mib:
            gpu = mib * 2**20
            return TrialNode(True, gpu * share, f"{of}one {settings.accelerator_type}'s {gpu / GB:.1f} GB"), ""
        if not settings.address:
            gpus = local_gpu_memory()
            if gpus:
                return TrialNode(True, min(gpus) * share, f"{of}this machine's GPU's {min(gpus) / GB:.1f} GB"), ""
            if settings.device == "gpu":
                return None, "--device gpu and this machine has no GPU: the trials' memory was not checked"
    if settings.address:
        return None, (
            "the memory of the cluster's nodes is not known before Ray starts: the trials' memory was not checked "
            f"(--accelerator-type {', '.join(GPU_MEMORY_MIB)} lets the preflight check it against that GPU's)"
        )
    # As rayexp.orchestrate.resources places CPU trials: 1 worker and 1 data CPU each unless set, as many at once as
    # the CPUs hold (at most --max-concurrent)
    worker, data = trial_cpus(settings, use_gpu=False)
    at_once = max(1, int((os.cpu_count() or 1) // (worker + data)))
    at_once = min(at_once, settings.max_concurrent or at_once)
    memory = host_memory()
    where = f"this machine's {memory / GB:.1f} GB of memory"
    return TrialNode(False, memory, where, threads=max(1, math.floor(worker)), at_once=at_once), ""


def _size_text(backbone: str, size: tuple[int, int]) -> str:
    fixed = get_spec(backbone).fixed_input
    if fixed and tuple(fixed) != tuple(size):
        return f"{fixed[0]}x{fixed[1]} (resized from {size[0]}x{size[1]})"
    return f"{size[0]}x{size[1]}"


def memory_problems(
    settings: SweepSettings, manifests: dict[str, dict], node: TrialNode
) -> tuple[list[str], list[str]]:
    """``(problems, notes)``: every (backbone, dataset) whose trial's memory (:func:`trial_memory`, at the trial's
    batch, precision and input size) exceeds ``node``'s, with the numbers and the largest batch that fits; a
    note for each backbone whose memory could not be counted, and one where the CPU trials that run at once
    (``node.at_once``) could together exceed it."""
    problems, notes, largest = [], [], None
    precision = trial_precision(settings.train.precision, node.gpu)
    for backbone in settings.backbones:
        for name, manifest in sorted(manifests.items()):
            size = tuple(manifest["input_size"])
            batch = settings.batch_size_for(backbone, size)
            classes = manifest.get("n_classes") or len(manifest["classes"])
            try:
                estimate = trial_memory(backbone, size, batch, precision, classes, flops=not node.gpu)
            except RayexpError as exc:
                notes.append(f"{exc}; not checked against {node.where}")
                continue
            if estimate.total_bytes <= node.memory:
                if largest is None or estimate.total_bytes > largest[0].total_bytes:
                    largest = (estimate, backbone, name)
                continue
            fits = estimate.largest_batch(node.memory)
            fix = (
                f"--batch-size {fits} or less (it sets every backbone's batch)"
                if fits >= 2
                else "not even a batch of 2 fits"
            )
            problems.append(
                f"{backbone} on {name} at {_size_text(backbone, size)}, batch {batch}, {precision}: "
                f"{estimate.describe()} > {node.where}; fix: {fix}, or leave it out of --backbones (a smaller "
                "backbone or input size)"
            )
    trials = len(settings.backbones) * len(manifests) * len(set(settings.fractions)) * len(set(settings.seeds))
    at_once = min(node.at_once, trials)
    if largest and at_once > 1 and at_once * largest[0].total_bytes > node.memory:
        estimate, backbone, name = largest
        notes.append(
            f"up to {at_once} trials run at once on this machine: {backbone} on {name} needs "
            f"{estimate.describe()} each, {at_once * estimate.total_bytes / GB:.1f} GB for {at_once} > {node.where}; "
            f"--max-concurrent {max(1, int(node.memory // estimate.total_bytes))} keeps them within it"
        )
    return problems, notes


def least_epochs(settings: SweepSettings) -> int:
    """The fewest epochs a trial runs: DualOpt's first phase ends after ``patience`` epochs without improvement
    (the first epoch always improves), its second after ``patience`` more; each capped at ``max_epochs``, and the
    whole at ``--trial-epoch-budget``."""
    t = settings.train
    epochs = min(t.max_epochs, t.patience + 1) + (min(t.max_epochs, t.patience) if t.dualopt else 0)
    return min(epochs, settings.trial_epoch_budget or epochs)


def cpu_time_notes(
    settings: SweepSettings, manifests: dict[str, dict], node: TrialNode, flops_per_thread: float = CPU_FLOPS_PER_THREAD
) -> list[str]:
    """CPU trials that would take :data:`LONG_TRIAL_HOURS` or more at the least: the training FLOPs (three
    forwards per training image, one per test or validation image) over the fewest epochs a trial runs
    (:func:`least_epochs`) at the largest fraction, at ``flops_per_thread`` per thread. None on a GPU, or where
    ``--trial-time-budget`` stops trials within the hour."""
    budget = settings.trial_time_budget
    if node.gpu or (budget is not None and budget < LONG_TRIAL_HOURS * 3600):
        return []
    precision = trial_precision(settings.train.precision, on_gpu=False)
    epochs, fraction, rate = least_epochs(settings), max(settings.fractions), flops_per_thread * node.threads
    trials = len(set(settings.fractions)) * len(set(settings.seeds))
    notes = []
    for backbone in settings.backbones:
        for name, manifest in sorted(manifests.items()):
            size = tuple(manifest["input_size"])
            try:
                counted = footprint(backbone, size, precision, flops=True)
            except RayexpError:  # memory_problems notes it
                continue
            trained = manifest["splits"]["train"]["rows"] * fraction
            evaluated = sum(split["rows"] for split_name, split in manifest["splits"].items() if split_name != "train")
            seconds = epochs * (trained * counted.train_flops + evaluated * counted.forward_flops) / rate
            hours = seconds / 3600
            if hours < LONG_TRIAL_HOURS:
                continue
            notes.append(
                f"{backbone} on {name} at {_size_text(backbone, size)}, {precision}: at least about {hours:.1f} "
                f"hours per trial on this CPU (x{trials} trials): {epochs} epochs at the least of {trained:.0f} "
                f"training images (fraction {fraction:g}), {counted.train_flops / 1e9:.1f} GFLOP each, at "
                f"{rate / 1e9:.0f} GFLOP/s; a GPU, a smaller backbone or input, or --trial-time-budget shortens it"
            )
    return notes


def trial_memory_check(
    settings: SweepSettings, manifests: dict[str, dict], node: TrialNode | None = None
) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of the sweep's trials on ``node`` (by default :func:`trial_node`): the trials that
    cannot fit its memory (:func:`memory_problems`), and notes: CPU trials of an hour or more
    (:func:`cpu_time_notes`), what could not be checked."""
    if node is None:
        node, why = trial_node(settings)
        if node is None:
            return [], [why]
    problems, uncounted = memory_problems(settings, manifests, node)
    return problems, uncounted + cpu_time_notes(settings, manifests, node)


def weights_problems(
    backbones: Sequence[str],
    weights_dir: str | None,
    fallback_to_random: bool,
    checkpoints: Mapping[str, str] | None = None,
    announce: bool = True,
) -> tuple[dict[str, str], list[str], list[WeightsStatus]]:
    """``({backbone: its weights origin}, problems, the missing weights' statuses)``: ``pretrained``, ``random``,
    or a user checkpoint's ``checkpoint:sha256:…`` (:func:`checkpoint_problems`).

    Without ``fallback_to_random`` (the paper's grid) every unavailable weight file is a problem, listed with
    where to put it. With it (the demo, ``--allow-random-init``) none is: :func:`announce_random_init` says so
    once, loudly, and every such run records ``weights=random``. A ``<name>+random`` backbone asks for random
    init: nothing is looked up, and nothing announced.
    """
    checkpoints = checkpoints or {}
    origins, problems = checkpoint_problems(backbones, checkpoints, announce)
    looked_up = [b for b in backbones if b not in checkpoints and not get_spec(b).random_init]
    origins.update({b: "random" for b in backbones if b not in checkpoints and get_spec(b).random_init})
    statuses = [weights_status(get_spec(b), weights_dir) for b in looked_up]
    missing = [s for s in statuses if not s.available]
    if not fallback_to_random:
        problems += [f"{s.backbone}: {s.where}\n      fix: {s.fix}" for s in missing]
    origins.update({s.backbone: ("pretrained" if s.available else "random") for s in statuses})
    return origins, problems, missing


def checkpoint_problems(
    backbones: Sequence[str], checkpoints: Mapping[str, str], announce: bool = True
) -> tuple[dict[str, str], list[str]]:
    """``--weights``: each checkpoint read (tensors only) and matched to its backbone's model, as a trial will;
    ``({backbone: "checkpoint:sha256:…"}, problems)``. How each was matched is printed (``announce``), in one
    line."""
    origins, problems = {}, []
    for backbone, path in checkpoints.items():
        if backbone not in backbones:
            problems.append(f"--weights {backbone}={path}: {backbone} is not a backbone of this sweep")
            continue
        spec = get_spec(backbone)
        if spec.random_init:
            problems.append(f"--weights {backbone}={path}: {backbone} trains from random init by its name")
            continue
        try:
            found = read_checkpoint(path)
            how = check_checkpoint(spec, found)
        except RayexpError as exc:
            problems.append(f"{backbone}: {exc}")
            continue
        unwrapped = f" (unwrapped: {found.unwrapped})" if found.unwrapped else ""
        if announce:
            print(f"[rayexp] {backbone} starts from {found.label}: {how}{unwrapped}", flush=True)
        origins[backbone] = found.origin
    return origins, problems


def announce_random_init(missing: Sequence[WeightsStatus]) -> None:
    """The banner for backbones that will train from random init (stderr)."""
    if not missing:
        return
    bar = "!" * 78
    names = ", ".join(s.backbone for s in missing)
    print(
        f"\n{bar}\n!! NO PRETRAINED WEIGHTS for {names}: offline and not in the cache.\n"
        f"!! These backbones train from RANDOM INIT; every run records weights=random.\n"
        f"!! Their numbers are not ImageNet fine-tuning results. To use real weights:\n"
        + "".join(f"!!   {s.fix}\n" for s in missing)
        + f"{bar}\n",
        file=sys.stderr,
        flush=True,
    )


def selection_problems(keys, manifests: dict[str, dict], selection: str) -> list[str]:
    """With ``selection=val``, every class of every (dataset, fraction) must leave a validation row to select
    on: a class with a single training row at that fraction would be trained on but never validated."""
    if selection != "val":
        return []
    problems = []
    for dataset, fraction in sorted({(k.dataset, k.fraction) for k in keys if k.dataset in manifests}):
        manifest = manifests[dataset]
        single = [manifest["classes"][c] for c, k in enumerate(fraction_thresholds(manifest, fraction)) if k < 2]
        if single:
            names = ", ".join(single[:5]) + (f" and {len(single) - 5} more" if len(single) > 5 else "")
            problems.append(
                f"{dataset} at fraction {fraction}: {len(single)} class(es) have a single training row, none to "
                f"hold out ({names})"
            )
    return problems


def unwritable(location: str) -> str | None:
    """Why the local folder ``location`` cannot be written (or created), or None: tried by writing a file
    into it or into its nearest existing parent, so nothing is left behind (a bucket URI is left to its
    client)."""
    if is_uri(location):
        return None
    folder = Path(location).expanduser()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".rayexp-write-test-"):
            pass
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def tracking_problems(uri: str) -> list[str]:
    """What stops the MLflow store at ``uri`` from being used, found without writing to it: a server that
    does not answer, a SQLite file whose folder cannot be written. (Creating the experiment, once every
    check passed, finds the rest.)"""
    try:
        tracking.check_server(uri)
    except RayexpError as exc:
        return [str(exc)]
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///") :]).parent
        why = unwritable(str(folder))
        if why:
            return [
                f"the MLflow store {uri} cannot be created: its folder {folder} cannot be written ({why}); pass "
                "--tracking-uri sqlite:///<a writable folder>/mlflow.db"
            ]
    return []


def before_data(settings: SweepSettings, fallback_to_random: bool) -> Problems:
    """What a command that prepares data first (``my_data``) checks before reading any image: the weights
    (unless ``fallback_to_random``) and ``--weights`` checkpoints, the tracking store and the storage folder.

    A store or storage that cannot be used stops here, with every problem found (the weights' too): nothing can
    be locked or kept. Weights that cannot be had are returned instead, for the caller to list together with
    the data check's serious findings once it has run, so that one round lists everything to fix.
    """
    found, weights = Problems(), Problems()
    backbones, tracking_uri, storage = settings.backbones, settings.tracking_uri, settings.storage
    checkpoints = weights.attempt(WEIGHTS, settings.checkpoint_files) or {}
    weights.add(
        WEIGHTS, weights_problems(backbones, settings.weights_dir, fallback_to_random, checkpoints, announce=False)[1]
    )
    found.add(STORE, tracking_problems(tracking.resolve_tracking_uri(tracking_uri)))
    why = unwritable(storage)
    found.add(LOCATIONS, [f"--storage {storage} is not a writable folder ({why})"] if why else [])
    if found:
        for title, (problems, advice) in weights.sections.items():
            found.add(title, problems, advice)
        found.raise_if_any()
    return weights


def node_problems(
    data_dir: str,
    datasets: list[str],
    pretrained: list[str],
    weights_dir: str | None,
    tracking_uri: str,
    offline: bool,
    checkpoints: Mapping[str, str] | None = None,
) -> list[str]:
    """What this node cannot do for a sweep: read the datasets, find the weights and ``checkpoints`` (path ->
    the sha256 the driver read), reach MLflow.

    Runs on every node of a cluster (as a Ray task) before any trial starts; returns problems, not raises,
    so that the driver can list all nodes' problems at once.
    """
    problems = []
    for name in datasets:
        try:
            load_manifest(data_dir, name)
        except RayexpError as exc:
            problems.append(f"dataset {name}: {exc}")
    if offline:
        os.environ[OFFLINE_ENV] = "1"
    for backbone in pretrained:
        status = weights_status(get_spec(backbone), weights_dir)
        if not status.available:
            problems.append(f"weights of {backbone}: {status.where}; fix: {status.fix}")
    for path, sha in (checkpoints or {}).items():
        if not Path(path).is_file():
            problems.append(f"--weights {path}: not on this node; put it on storage every node sees")
        elif file_sha256(Path(path)) != sha:
            problems.append(f"--weights {path}: this node's copy differs from the driver's (sha256)")
    if tracking_uri.startswith(("http://", "https://")):
        try:
            tracking.check_server(tracking_uri)
        except RayexpError as exc:
            problems.append(str(exc))
    elif tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists():
        problems.append(
            f"the MLflow store {tracking_uri} is a file this node cannot see; on a multi-node cluster run an MLflow "
            "server (cluster.yaml starts one on the head) and pass --tracking-uri http://<head>:5000"
        )
    return problems
