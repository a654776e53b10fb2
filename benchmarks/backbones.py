"""Training throughput per backbone: forward+backward images/second with mixed precision.

Prints one row per backbone and its ratio to ResNet-50 measured in the same run, then a last line
``ratio <name> <value>`` per backbone. On a GPU use the paper's size (``--size 256``); on a CPU a small
size keeps it to a minute or two.

    python benchmarks/backbones.py                      # CPU: 64x64, batch 8, bf16 autocast
    python benchmarks/backbones.py --size 256 --batch 128 --steps 20   # GPU
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from rayexp.backbones import create_backbone, list_backbones
from rayexp.training import autocast, resolve_precision


def images_per_second(
    name: str, size: int, batch: int, steps: int, warmup: int, device: torch.device, precision: str, channels_last: bool
) -> float:
    model = create_backbone(name, num_classes=100, pretrained=False).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    criterion = nn.CrossEntropyLoss()
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (batch,), device=device)
    model.train()

    def step() -> None:
        with autocast(device, precision):
            loss = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=None, help="input side (default 256 on GPU, 64 on CPU)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 128 on GPU, 8 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 (auto on GPU)")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--backbones", nargs="+", default=[s.name for s in list_backbones()])
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    size = args.size or (256 if gpu else 64)
    batch = args.batch or (128 if gpu else 8)
    steps = args.steps or (20 if gpu else 3)
    precision = args.precision or (resolve_precision("auto", device) if gpu else "bf16")
    names = ["resnet50"] + [n for n in args.backbones if n != "resnet50"]
    where = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"# forward+backward, {size}x{size}, batch {batch}, {precision}, "
        f"channels_last={not args.no_channels_last}, {steps} steps, on {where}"
    )
    rates = {}
    for name in names:
        rates[name] = images_per_second(
            name, size, batch, steps, args.warmup, device, precision, not args.no_channels_last
        )
        print(f"{name:<22} {rates[name]:10.1f} img/s   x{rates[name] / rates['resnet50']:.2f} vs resnet50", flush=True)
    for name in names:
        print(f"ratio {name} {rates[name] / rates['resnet50']:.3f}")


if __name__ == "__main__":
    main()
