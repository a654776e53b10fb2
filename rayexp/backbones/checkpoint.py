"""A user's own weights for any backbone (``--weights BACKBONE=PATH``): a checkpoint read as tensors only and
matched to the model, or refused with the reason.

In-domain pretraining (RadImageNet for X-rays, a lab's self-supervised weights) is what practitioners most often
compare against ImageNet's, and such files come in every wrapping. The rules, in order:

1. **Tensors only**: safetensors, or ``torch.load(weights_only=True)``; a pickle that would run code is refused,
   never loaded.
2. **Containers unwrapped**: the tensors may sit under ``state_dict``, ``model``, ``module``, ``network``,
   ``net`` or ``weights`` (nested any depth). Beside them, ``mean`` and ``std`` (three numbers each) say how the
   weights' images were normalised (``--normalize model`` uses them).
3. **Wrappers stripped**: ``module.`` (DataParallel), ``model.``, ``backbone.``, ``encoder.`` when every key has
   it; a file whose ``backbone.``/``encoder.`` keys sit beside a projection head keeps the backbone's only.
4. **The classifier head left out**, on both sides: its size differs by design, and the trial's head is new.
5. **By name** when the file uses the model's names: every other tensor must be there, with its shape; **by
   order** when the names differ wholesale (another codebase's naming of the same network) and every tensor's
   shape matches the model's in order, said in one line. Anything else is refused, naming the first key and the
   shapes that differ.

The file's sha256 is the weights' identity: recorded on every run (``weights_origin``), compared on resume, and
checked again by each trial against the one the preflight read.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from rayexp.errors import RayexpError
from rayexp.safeload import CarriesCode, load_tensors

CONTAINERS = ("state_dict", "model", "module", "network", "net", "weights")
WRAPPERS = ("module.", "model.", "backbone.", "encoder.")
PARTS = ("backbone.", "encoder.")  # prefixes whose keys may sit beside others (a projection head) and are kept
ORIGIN_PREFIX = "checkpoint:sha256:"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    """A user's weight file, unwrapped: its tensors in file order, the normalisation it declares, its sha256."""

    path: Path
    sha256: str
    tensors: dict[str, torch.Tensor]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    unwrapped: str = ""  # what was unwrapped or stripped, in words ("" when nothing)

    @property
    def origin(self) -> str:
        """The ``weights_origin`` of a run that started from it: compared on resume, like a fingerprint."""
        return ORIGIN_PREFIX + self.sha256

    @property
    def label(self) -> str:
        """How the report names the weights (the run's ``weights`` param)."""
        return f"checkpoint {self.path.name} (sha256:{self.sha256[:12]})"


def _load(path: Path) -> object:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return load_tensors(path, f"--weights {path}")
    except CarriesCode as exc:
        raise RayexpError(
            f"{exc}. Save the weights as a state dict (torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file fails deep inside either reader, any type
        raise RayexpError(f"--weights {path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None


def _numbers(value: object) -> tuple[float, ...] | None:
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    return None


def _unwrap(found: object, path: Path) -> tuple[dict[str, torch.Tensor], dict, list[str]]:
    """The tensors of a container (and the container holding them, for its mean/std), and what was unwrapped."""
    steps: list[str] = []
    holder: dict = found if isinstance(found, dict) else {}
    while isinstance(found, dict) and not any(isinstance(v, torch.Tensor) for v in found.values()):
        inner = next((k for k in CONTAINERS if isinstance(found.get(k), dict)), None)
        if inner is None:
            break
        holder, found = found, found[inner]
        steps.append(f"the tensors under {inner!r}")
    if not isinstance(found, dict):
        raise RayexpError(f"--weights {path}: holds a {type(found).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in found.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise RayexpError(
            f"--weights {path}: no tensors found (keys: {', '.join(map(str, list(found)[:8]))}); expected a state "
            f"dict, possibly under one of {', '.join(CONTAINERS)}"
        )
    return tensors, holder, steps


def _strip(tensors: dict[str, torch.Tensor], steps: list[str]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPERS:
            having = [k for k in tensors if k.startswith(prefix)]
            if not having:
                continue
            if len(having) == len(tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                steps.append(f"the prefix {prefix!r}")
                changed = True
            elif prefix in PARTS:
                left = len(tensors) - len(having)
                tensors = {k[len(prefix) :]: tensors[k] for k in having}
                steps.append(f"the {len(having)} tensors under {prefix!r} (left out {left} others beside them)")
                changed = True
    return tensors


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path``, as tensors only, unwrapped and stripped (rules 1-3 of the module)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise RayexpError(f"--weights {path}: no such file")
    sha = file_sha256(path)
    tensors, holder, steps = _unwrap(_load(path), path)
    tensors = _strip(tensors, steps)
    mean, std = _numbers(holder.get("mean")), _numbers(holder.get("std"))
    return Checkpoint(path, sha, tensors, mean, std, "; ".join(steps))


def _shape(value: torch.Tensor) -> list[int]:
    return list(value.shape)


def match_checkpoint(
    checkpoint: Checkpoint, model_state: Mapping[str, torch.Tensor], head: Iterable[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict to load into a model whose state dict is ``model_state`` (built at its published head's
    size), every tensor but the ``head`` keys, and how it was matched (rules 4-5 of the module); refused with
    the first key and shapes that differ."""
    head = set(head)
    wanted = [(k, v) for k, v in model_state.items() if k not in head]
    given = checkpoint.tensors
    name = checkpoint.path.name
    if set(given) & {k for k, _ in wanted}:
        missing = [k for k, _ in wanted if k not in given]
        extra = [k for k in given if k not in model_state]
        if missing or extra:
            first = f"it lacks {missing[0]!r} ({len(missing)} missing)" if missing else ""
            more = f"it has {extra[0]!r}, which the model does not ({len(extra)} such)" if extra else ""
            raise RayexpError(
                f"--weights {name}: the names match the model's, but {first}{' and ' if first and more else ''}{more}"
            )
        for key, value in wanted:
            if _shape(given[key]) != _shape(value):
                shapes = f"{_shape(given[key])} in the file, {_shape(value)} in the model"
                raise RayexpError(f"--weights {name}: {key!r} has shape {shapes}")
        return {k: given[k] for k, _ in wanted}, f"{len(wanted)} tensors matched by name"
    return _by_order(checkpoint, model_state, head)


def _by_order(
    checkpoint: Checkpoint, model_state: Mapping[str, torch.Tensor], head: set[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """Names differ wholesale: map in order, only when every tensor's shape matches the model's in order (the
    file with its head at the model's head positions, any size, or without a head)."""
    model = list(model_state.items())
    given = list(checkpoint.tensors.items())
    name = checkpoint.path.name
    at_head = [i for i, (k, _) in enumerate(model) if k in head]
    if len(given) == len(model):
        pairs = [(model[i], given[i]) for i in range(len(model)) if i not in at_head]
    elif len(given) == len(model) - len(at_head):
        pairs = list(zip([m for i, m in enumerate(model) if i not in at_head], given))
    else:
        raise RayexpError(
            f"--weights {name}: its names are not the model's ({given[0][0]!r} vs {model[0][0]!r}) and it holds "
            f"{len(given)} tensors where the model has {len(model)} ({len(model) - len(at_head)} without its head): "
            "not the same network"
        )
    for (key, value), (theirs, found) in pairs:
        if _shape(found) != _shape(value):
            raise RayexpError(
                f"--weights {name}: its names are not the model's, and in order {theirs!r} {_shape(found)} meets "
                f"the model's {key!r} {_shape(value)}: not the same network"
            )
    mapped = {key: found for (key, _), (_, found) in pairs}
    return mapped, (
        f"{len(mapped)} tensors mapped by order (its names are another naming: {given[0][0]!r} -> {model[0][0]!r}, "
        "every shape matching in order)"
    )
