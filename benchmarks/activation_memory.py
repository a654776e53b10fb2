"""Training memory per backbone, counted on the CPU: what the batch sizes rest on until a GPU measures them.

Each registry backbone's trial model is counted on PyTorch's meta device (:mod:`rayexp.backbones.footprint`, what the
preflight checks every sweep with): the bytes autograd saves for the backward pass per image under bf16 autocast,
at 256x256 and at BreakHis's 448x672, plus 20 bytes per parameter (fp32 weights, gradients, AdamW's two moments
and the best epoch's copy) and autocast's bf16 weight copies. It leaves out the backward pass's transient buffers
and the convolution workspaces, which ``benchmarks/gpu_check.py`` measures on a GPU
(``torch.cuda.max_memory_allocated``). Printed at the registry's batch and at the batch a trial uses at each size
(``backbones.specs.batch_size_at``), against 72 GB (an A100 80 GB with headroom).

``--measure`` also runs each model for real on the CPU (channels-last, bf16 autocast, batches 2 and 4; parameters,
buffers and the input left out) and prints the bytes saved per image beside the count.

    python benchmarks/activation_memory.py              # seconds
    python benchmarks/activation_memory.py --measure    # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse

import torch

from rayexp.backbones import create_trial_model, list_backbones
from rayexp.backbones.footprint import trial_memory
from rayexp.backbones.specs import REGISTRY_INPUT, batch_size_at
from rayexp.data.catalog import BREAKHIS_SIZE
from rayexp.training import autocast

GB = 1e9
LIMIT = 72 * GB
CLASSES = 10


def saved_bytes(model: torch.nn.Module, size: tuple[int, int], batch: int, precision: str = "bf16") -> int:
    """Bytes autograd keeps for the backward pass of one real training forward of ``batch`` images on the CPU (at
    ``precision``): distinct storages, the input's, the parameters' and the buffers' left out."""
    held = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    images = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    held.add(images.untyped_storage().data_ptr())
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(images.device, precision):
        model(images)
    return sum(storages.values())


def measured_per_image(name: str, size: tuple[int, int]) -> float:
    """Bytes saved per image by the real model: the difference between batches 4 and 2, halved."""
    model = create_trial_model(name, CLASSES, seed=0, device=torch.device("cpu"), pretrained=False)
    return (saved_bytes(model, size, 4) - saved_bytes(model, size, 2)) / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=[s.name for s in list_backbones()])
    p.add_argument("--measure", action="store_true", help="also measure a real CPU forward of each model")
    args = p.parse_args()
    sizes = {"256x256": REGISTRY_INPUT, "breakhis": tuple(BREAKHIS_SIZE)}
    print("estimated training peak in bf16, GB: the registry's batch at each size, then the batch a trial uses there")
    measured = f"{'MB/img counted':>16}{'measured':>10}" if args.measure else ""
    print(f"{'backbone':<20}{'batch':>6}{'256x256':>9}{'breakhis':>10}{'trial batch':>13}{'breakhis':>10}{measured}")
    over = []
    for spec in list_backbones():
        if spec.name not in args.backbones:
            continue
        trial_batch = batch_size_at(spec.batch_size, BREAKHIS_SIZE)
        at_registry = {
            label: trial_memory(spec.name, size, spec.batch_size, "bf16", CLASSES) for label, size in sizes.items()
        }
        at_trial = trial_memory(spec.name, BREAKHIS_SIZE, trial_batch, "bf16", CLASSES)
        over += [f"{spec.name}@{label}" for label, e in at_registry.items() if e.total_bytes > LIMIT]
        line = (
            f"{spec.name:<20}{spec.batch_size:>6}{at_registry['256x256'].total_bytes / GB:>9.1f}"
            f"{at_registry['breakhis'].total_bytes / GB:>10.1f}{trial_batch:>13}{at_trial.total_bytes / GB:>10.1f}"
        )
        if args.measure:
            counted = at_registry["256x256"].footprint.saved_per_image
            line += f"{counted / 1e6:>16.1f}{measured_per_image(spec.name, REGISTRY_INPUT) / 1e6:>10.1f}"
        print(line, flush=True)
    print(f"over {LIMIT / GB:.0f} GB at the registry's batch: {', '.join(over) or 'none'}")


if __name__ == "__main__":
    main()
