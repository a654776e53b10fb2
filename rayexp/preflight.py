"""Checks that run before any trial starts, so that no GPU time is spent on a sweep that cannot finish.

Each check returns every problem it finds (not just the first) with the command that fixes it; a
:class:`Problems` gathers them all, so that one error lists everything wrong at once: missing datasets
with the command that prepares each, and missing weights, and the tracking store, together.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from rayexp import tracking
from rayexp.backbones import get_spec
from rayexp.backbones.checkpoint import file_sha256, read_checkpoint
from rayexp.backbones.factory import check_checkpoint
from rayexp.backbones.specs import REGISTRY_INPUT
from rayexp.backbones.weights import OFFLINE_ENV, WeightsStatus, weights_status
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
