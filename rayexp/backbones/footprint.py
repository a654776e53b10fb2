"""What one training step of a backbone holds in memory and computes, counted without running it: the trial's
model (:func:`rayexp.backbones.create_backbone`, its new head, at the trial's input size and precision) built on
PyTorch's ``meta`` device, where tensors have shapes and dtypes but no memory, so that even a 633M-parameter ViT at
518x518 is counted in about a second on a laptop.

One training forward pass there, at a batch of two, counts the bytes of every tensor autograd saves for the
backward pass (``torch.autograd.graph.saved_tensors_hooks``; each storage once; the input's, the parameters' and
the buffers' left out): half of it is the activation memory per image, which a trial's batch multiplies (the
little that does not grow with the batch, a few MB such as Swin V2's position-bias table, is counted per image
too). In fp32 the count equals, byte for byte, that of a real forward on the CPU (``tests/test_memory_estimate.py``
checks it). Two things differ on ``meta`` and are put back:

* attention: ``scaled_dot_product_attention`` takes its math path on ``meta``, which keeps the whole attention
  matrix (3.8 GB per image for ViT-H/14 at 518x518), where CPUs and GPUs run a fused kernel that keeps only its
  inputs, output and log-sum-exp; while counting, it is pointed at that kernel's CPU version;
* autocast does nothing on ``meta``: bf16/fp16 is counted with the model and its input in that dtype (the head
  in fp32, as :func:`rayexp.training.keep_fp32` keeps it), plus autocast's half copies of the weights (2 bytes
  per parameter). Autocast keeps a few ops in fp32 (softmax, normalisations): a real bf16 forward on the CPU saves
  1% more than this count on CNNs, 13-17% more on ViT-B/16 and Swin-T, so the half-precision count is low by that.

The same pass counts the forward FLOPs when asked (``torch.utils.flop_counter``; attention added by its formula,
the fused kernel having none there): a training step is about three forwards.

A trial's memory (:func:`trial_memory`) is then 20 bytes per parameter (fp32 weights, their gradients, AdamW's two
moments, and the best epoch's weights that :func:`rayexp.training.train` keeps beside them) plus the activations
at its batch. Left out, so that the estimate is a floor that a trial needs at least: the backward pass's transient
buffers, convolution workspaces, the CUDA context, the allocator's slack, and on the CPU the worker process and
its decoded-image cache. ``benchmarks/gpu_check.py`` measures the real peak on a GPU.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayexp.backbones.factory import create_backbone, get_head
from rayexp.backbones.resolve import get_spec
from rayexp.backbones.specs import RANDOM_SUFFIX
from rayexp.errors import RayexpError

GB = 1e9
# fp32 weights (4), their gradients (4), AdamW's exp_avg and exp_avg_sq (4 + 4), the best epoch's weights that
# rayexp.training.train keeps on the device to reload (4). DualOpt's SGD phase holds less (one momentum buffer).
STATE_BYTES_PER_PARAM = 20
HALF_COPY_BYTES_PER_PARAM = 2  # autocast's bf16/fp16 copies of the weights, saved for the backward pass
TRAIN_FORWARDS = 3  # a training step's FLOPs: the forward, and a backward of about twice that
BATCH = 2  # the batch counted: BatchNorm refuses one image at a 1x1 feature map
COUNTED_CLASSES = 2  # the head counted with; a trial's classes change its parameters only (Footprint.parameters)


@dataclass(frozen=True)
class Footprint:
    """One backbone at one input size and precision, per image and fixed, as counted on the meta device; the
    head's classes left open (they change its parameters only)."""

    backbone: str
    input_size: tuple[int, int]  # what the model computes at (a fixed-size model's own size, not the dataset's)
    precision: str  # "fp32", "bf16" or "fp16"
    body_parameters: int  # all but the trial's new head
    head_per_class: int  # the head's parameters per class: its inputs, and one for a bias
    saved_per_image: float  # bytes autograd keeps for the backward pass, per image
    saved_fixed: float  # bytes it keeps whatever the batch, beyond the parameters (autocast's weight copies)
    forward_flops: float  # per image; 0 where they were not counted

    def parameters(self, num_classes: int) -> int:
        """The trial model's parameters with a ``num_classes`` head."""
        return self.body_parameters + self.head_per_class * num_classes

    @property
    def train_flops(self) -> float:
        """A training step's FLOPs per image: forward and backward."""
        return TRAIN_FORWARDS * self.forward_flops


@dataclass(frozen=True)
class MemoryEstimate:
    """A trial's training memory: its optimizer state and its activations at ``batch``."""

    footprint: Footprint
    batch: int
    num_classes: int

    @property
    def state_bytes(self) -> float:
        """Weights, gradients, AdamW's moments and the best epoch's copy (:data:`STATE_BYTES_PER_PARAM`)."""
        return STATE_BYTES_PER_PARAM * self.footprint.parameters(self.num_classes)

    @property
    def activation_bytes(self) -> float:
        return self.footprint.saved_per_image * self.batch + self.footprint.saved_fixed

    @property
    def total_bytes(self) -> float:
        return self.state_bytes + self.activation_bytes

    def largest_batch(self, capacity: float) -> int:
        """The largest batch whose estimate fits ``capacity`` bytes (0: not even one image)."""
        room = capacity - self.state_bytes - self.footprint.saved_fixed
        return max(0, int(room // self.footprint.saved_per_image)) if self.footprint.saved_per_image > 0 else 0

    def describe(self) -> str:
        """``about 41.3 GB (weights and optimizer 12.7 GB + activations 28.6 GB)``."""
        return (
            f"about {self.total_bytes / GB:.1f} GB (weights and optimizer {self.state_bytes / GB:.1f} GB + "
            f"activations {self.activation_bytes / GB:.1f} GB)"
        )


def trial_precision(precision: str, on_gpu: bool) -> str:
    """``auto`` as a trial resolves it (:func:`rayexp.training.resolve_precision`): fp32 on the CPU, bf16 on a GPU
    (fp16 on GPUs without bf16 takes the same memory)."""
    if precision != "auto":
        return precision
    return "bf16" if on_gpu else "fp32"


def trial_memory(
    backbone: str,
    input_size: tuple[int, int] | list[int],
    batch: int,
    precision: str,
    num_classes: int = 1000,
    flops: bool = False,
) -> MemoryEstimate:
    """A trial's training memory: ``backbone`` with a ``num_classes`` head, trained on ``input_size`` (H, W) images
    at ``batch`` in ``precision`` (fp32, bf16 or fp16: :func:`trial_precision` resolves ``auto``); its FLOPs counted
    too with ``flops``."""
    return MemoryEstimate(footprint(backbone, tuple(input_size), precision, flops), batch, num_classes)


_COUNTED: dict[tuple, Footprint] = {}


def footprint(backbone: str, input_size: tuple[int, int], precision: str, flops: bool = False) -> Footprint:
    """:class:`Footprint` of ``backbone`` trained on ``input_size`` images (its ``forward_flops`` 0 unless ``flops``);
    counted once per (backbone, the size the model computes at, precision) in a process, a ``+random`` name with
    its pretrained one."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise RayexpError(f"precision {precision!r}: expected fp32, bf16 or fp16 (resolve auto first)")
    spec = get_spec(backbone)
    size = tuple(spec.fixed_input or input_size)
    if spec.random_init:  # the same network as its pretrained name
        backbone = backbone.removesuffix(RANDOM_SUFFIX)
    key = (backbone, size, precision)
    if key not in _COUNTED or (flops and not _COUNTED[key].forward_flops):
        _COUNTED[key] = _count(backbone, size, precision, flops)
    return _COUNTED[key]


def _count(backbone: str, size: tuple[int, int], precision: str, flops: bool) -> Footprint:
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16 if precision == "bf16" else torch.float16
    model = meta_model(backbone, COUNTED_CLASSES, dtype)
    head = sum(p.numel() for p in get_head(model, get_spec(backbone)).parameters())
    body = sum(p.numel() for p in model.parameters()) - head
    try:
        saved, counted = _count_forward(model, size, dtype, flops)
    except Exception as exc:  # an op without a meta kernel, a model that reads its data or refuses the size
        raise RayexpError(
            f"{backbone}: its training memory at {size[0]}x{size[1]} cannot be counted on the meta device "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    fixed = HALF_COPY_BYTES_PER_PARAM * body if dtype != torch.float32 else 0.0  # autocast's copies; the head is fp32
    per_class = head // COUNTED_CLASSES
    return Footprint(backbone, size, precision, body, per_class, saved / BATCH, fixed, counted / BATCH)


def meta_model(backbone: str, num_classes: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The trial's model (:func:`create_backbone`, without weights) on the meta device, in training mode; in a half
    ``dtype`` everywhere but its head, whose input is cast to fp32 as :func:`rayexp.training.keep_fp32` does."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = create_backbone(backbone, num_classes, pretrained=False)
    except (NotImplementedError, RuntimeError):  # regnets' init cannot run on the meta device: built, then moved
        model = create_backbone(backbone, num_classes, pretrained=False).to("meta")
    if dtype != torch.float32:
        model = model.to(dtype)
        head = get_head(model, get_spec(backbone)).float()
        head.register_forward_pre_hook(lambda module, args: (args[0].float(), *args[1:]))
    return model.train()


def _count_forward(model: nn.Module, size: tuple[int, int], dtype: torch.dtype, flops: bool) -> tuple[float, float]:
    """(bytes autograd saves, forward FLOPs when ``flops``, else 0) of one training forward of :data:`BATCH`
    images: every storage a saved tensor views, once, but the input's, the parameters' and the buffers'."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.empty(BATCH, 3, *size, device="meta", dtype=dtype)
    held = {t.untyped_storage()._cdata for t in (images, *model.parameters(), *model.buffers())}
    storages: dict[int, torch.UntypedStorage] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in held:
            storages[storage._cdata] = storage  # kept: a freed storage's address could be reused and merged
        return tensor

    attention = [0.0]
    counter = FlopCounterMode(display=False) if flops else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack), _fused_attention(attention), counter:
        model(images)
    counted = counter.get_total_flops() + attention[0] if flops else 0.0
    return float(sum(s.nbytes() for s in storages.values())), float(counted)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def _fused_attention(flops: list[float]):
    """``F.scaled_dot_product_attention`` on meta tensors as the fused kernel CPUs and GPUs run (see the module's
    docstring); its FLOPs added to ``flops[0]``. Patched on ``torch.nn.functional`` for the duration: models call it
    through that module (torchvision's ``multi_head_attention_forward``, timm's ``F.``)."""
    from torch.utils.flop_counter import flop_registry, sdpa_flop_count

    original = F.scaled_dot_product_attention
    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counted = kernel in flop_registry  # not in torch 2.14's FlopCounterMode

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        four = query.dim() == key.dim() == value.dim() == 4
        if query.device.type == "meta" and four and not enable_gqa and key.shape[1] == query.shape[1]:
            flops[0] += 0 if counted else sdpa_flop_count(query.shape, key.shape, value.shape)
            return kernel(query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale)[0]
        return original(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
