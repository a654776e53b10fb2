"""Single-level 2D Haar ('db1') discrete wavelet transform in plain torch.

WaveMix mixes tokens with a 2D DWT. The published model uses
``pytorch_wavelets.DWTForward(wave='db1', mode='zero')``; this module
reproduces that transform (and therefore ``pywt.dwt2(x, 'db1', mode='zero')``)
with one grouped, strided ``conv2d`` so that it

* adds no dependency beyond torch and PyWavelets (only for the filter taps),
* has no parameters and no ``state_dict`` entries, so checkpoints of the
  published model load with ``strict=True``,
* runs on any device and float dtype, under ``torch.autocast`` and with
  autograd (the conv's own backward is the exact adjoint).

Conventions (checked against PyWavelets in ``tests/test_wavemix.py``): for an
input channel ``c`` the detail output holds, at channels ``3c, 3c+1, 3c+2``,
``cH, cV, cD`` exactly as ``pywt.dwt2`` returns them:

* ``cH``: highpass along height (rows, dim -2), lowpass along width,
* ``cV``: lowpass along height, highpass along width (dim -1),
* ``cD``: highpass along both.

For a 2x2 block ``[[a, b], [c, d]]`` this gives ``cA = (a+b+c+d)/2``,
``cH = (a+b-c-d)/2``, ``cV = (a-b+c-d)/2``, ``cD = (a-b-c+d)/2``.
"""

from __future__ import annotations

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HaarDWT2d", "dwt2_haar", "haar_filters"]


def haar_filters(dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """Return the four 2x2 analysis kernels (LL, cH, cV, cD) as a (4, 1, 2, 2) tensor.

    The taps come from ``pywt.Wavelet('db1')`` so the scaling (1/sqrt(2) per
    axis) and signs are PyWavelets' own. PyWavelets convolves and then keeps
    odd-indexed samples; for a length-2 filter on an even-length signal with
    zero padding that equals a stride-2 *correlation* with the reversed
    filter, which is what ``conv2d`` computes, hence the ``[::-1]``.
    """
    wavelet = pywt.Wavelet("db1")
    lo = torch.tensor(wavelet.dec_lo[::-1], dtype=torch.float64)
    hi = torch.tensor(wavelet.dec_hi[::-1], dtype=torch.float64)
    # kernel[i, j] = f_rows[i] * f_cols[j]; rows = height (dim -2), cols = width (dim -1).
    kernels = torch.stack(
        [
            torch.outer(lo, lo),  # cA: lowpass height, lowpass width
            torch.outer(hi, lo),  # cH: highpass height, lowpass width
            torch.outer(lo, hi),  # cV: lowpass height, highpass width
            torch.outer(hi, hi),  # cD: highpass both
        ]
    ).unsqueeze(1)
    return kernels.to(dtype=dtype, device=device)


def _check_input(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"Haar DWT expects a 4D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"Haar DWT needs even height and width, got {h}x{w} (H x W)")
    if not x.is_floating_point():
        raise TypeError(f"Haar DWT expects a floating point tensor, got {x.dtype}")


def _dwt2_with_filters(x: Tensor, filters: Tensor) -> tuple[Tensor, Tensor]:
    _check_input(x)
    n, c, h, w = x.shape
    # Cast to the input's dtype/device: keeps float64 exact, and under autocast
    # conv2d recasts both operands to the autocast dtype anyway.
    weight = filters.to(dtype=x.dtype, device=x.device).repeat(c, 1, 1, 1)  # (4C, 1, 2, 2)
    y = F.conv2d(x, weight, stride=2, groups=c)  # channel 4c + k, k in (A, H, V, D)
    y = y.reshape(n, c, 4, h // 2, w // 2)
    ll = y[:, :, 0]
    details = y[:, :, 1:].reshape(n, 3 * c, h // 2, w // 2)
    return ll, details


def dwt2_haar(x: Tensor) -> tuple[Tensor, Tensor]:
    """One level of the 2D Haar DWT of ``x`` (N, C, H, W), H and W even.

    Returns ``(ll, details)`` with ``ll`` of shape (N, C, H/2, W/2) and
    ``details`` of shape (N, 3C, H/2, W/2), channel-major ``(cH, cV, cD)`` per
    input channel (the layout WaveMix gets by reshaping pytorch_wavelets'
    (N, C, 3, H, W) high-pass output).
    """
    return _dwt2_with_filters(x, haar_filters(dtype=x.dtype, device=x.device))


class HaarDWT2d(nn.Module):
    """Parameter-free module form of :func:`dwt2_haar`.

    The kernels live in a non-persistent buffer: it follows ``.to(device)``
    but never appears in ``state_dict`` (the published WaveMix checkpoint has
    no wavelet entries, and it must load with ``strict=True``).
    """

    filters: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("filters", haar_filters(dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(ll, details)``; see :func:`dwt2_haar` for shapes and order."""
        return _dwt2_with_filters(x, self.filters)
