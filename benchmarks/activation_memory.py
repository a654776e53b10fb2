"""Training memory per backbone, counted on the CPU: what the batch sizes rest on until a GPU measures them.

For each registry backbone (the trial's model: ``create_trial_model``, channels-last), one training forward
pass under bf16 autocast at 256x256 and at BreakHis's 448x672 counts the bytes of every tensor autograd saves
for the backward pass (distinct storages, the input excluded), per image. The estimated peak at a batch is that
times the batch plus 16 bytes per parameter (fp32 weights, gradients and AdamW's two moments); it leaves out
the backward pass's transient buffers and the convolution workspaces, which ``benchmarks/gpu_check.py``
measures on a GPU (``torch.cuda.max_memory_allocated``). Printed at the registry's batch and at the batch a
trial uses at each size (``backbones.specs.batch_size_at``), against 72 GB (an A100 80 GB with headroom).

    python benchmarks/activation_memory.py          # under a minute on 2 cores
"""

from __future__ import annotations

import argparse

import torch

from rayexp.backbones import create_trial_model, list_backbones
from rayexp.backbones.specs import REGISTRY_INPUT, batch_size_at
from rayexp.data.catalog import BREAKHIS_SIZE
from rayexp.training import autocast

GB = 1e9
LIMIT = 72 * GB


def saved_bytes_per_image(model: torch.nn.Module, size: tuple[int, int], batch: int = 2) -> float:
    """Bytes autograd keeps for the backward pass of one training forward, per image."""
    storages: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    images = torch.randn(batch, 3, *size).contiguous(memory_format=torch.channels_last)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(images.device, "bf16"):
        model(images)
    storages.pop((images.untyped_storage().data_ptr(), images.untyped_storage().nbytes()), None)
    return sum(storages.values()) / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=[s.name for s in list_backbones()])
    args = p.parse_args()
    sizes = {"256x256": REGISTRY_INPUT, "breakhis": tuple(BREAKHIS_SIZE)}
    print("estimated training peak, GB: the registry's batch at each size, then the batch a trial uses there")
    print(f"{'backbone':<20}{'batch':>6}{'256x256':>9}{'breakhis':>10}{'trial batch':>13}{'breakhis':>10}")
    over = []
    for spec in list_backbones():
        if spec.name not in args.backbones:
            continue
        model = create_trial_model(spec.name, 10, seed=0, device=torch.device("cpu"), pretrained=False)
        static = 16 * sum(p.numel() for p in model.parameters())
        per_image = {label: saved_bytes_per_image(model, size) for label, size in sizes.items()}
        trial_batch = batch_size_at(spec.batch_size, BREAKHIS_SIZE)
        at_registry = {label: static + per_image[label] * spec.batch_size for label in sizes}
        at_trial = static + per_image["breakhis"] * trial_batch
        over += [f"{spec.name}@{label}" for label, peak in at_registry.items() if peak > LIMIT]
        print(
            f"{spec.name:<20}{spec.batch_size:>6}{at_registry['256x256'] / GB:>9.1f}"
            f"{at_registry['breakhis'] / GB:>10.1f}{trial_batch:>13}{at_trial / GB:>10.1f}",
            flush=True,
        )
    print(f"over {LIMIT / GB:.0f} GB at the registry's batch: {', '.join(over) or 'none'}")


if __name__ == "__main__":
    main()
