"""Tests for the torch Haar DWT and the checkpoint-compatible WaveMix-192/16 backbone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import pywt
import torch

from rayexp.backbones.haar import HaarDWT2d, dwt2_haar
from rayexp.backbones.wavemix import (
    WAVEMIX_WEIGHTS_FILE,
    WAVEMIX_WEIGHTS_URL,
    Level3Waveblock,
    WaveMix,
    wavemix_192_16,
)

PUBLISHED_PARAM_COUNT = 27_857_608
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _pywt_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (n, c) plane pywt.dwt2; details stacked channel-major as (cH, cV, cD)."""
    n, c, h, w = x.shape
    ll = np.empty((n, c, h // 2, w // 2))
    det = np.empty((n, 3 * c, h // 2, w // 2))
    for i in range(n):
        for j in range(c):
            ca, (ch, cv, cd) = pywt.dwt2(x[i, j], "db1", mode="zero")
            ll[i, j] = ca
            det[i, 3 * j], det[i, 3 * j + 1], det[i, 3 * j + 2] = ch, cv, cd
    return ll, det


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hw", [(2, 2), (8, 6), (32, 32), (64, 48)])
def test_haar_matches_pywt(hw: tuple[int, int], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(hw[0] * 100 + hw[1])
    x = torch.randn(2, 3, *hw, generator=gen, dtype=torch.float64)
    ref_ll, ref_det = _pywt_reference(x.numpy())
    for ll, det in (HaarDWT2d()(x.to(dtype)), dwt2_haar(x.to(dtype))):
        assert ll.dtype == dtype and det.dtype == dtype
        assert ll.shape == (2, 3, hw[0] // 2, hw[1] // 2)
        assert det.shape == (2, 9, hw[0] // 2, hw[1] // 2)
        np.testing.assert_allclose(ll.double().numpy(), ref_ll, atol=TOL[dtype], rtol=0)
        np.testing.assert_allclose(det.double().numpy(), ref_det, atol=TOL[dtype], rtol=0)


def test_haar_band_conventions_on_known_block() -> None:
    # [[a, b], [c, d]] = [[0, 1], [4, 5]]: rows differ by 4, columns by 1.
    x = torch.tensor([[[[0.0, 1.0], [4.0, 5.0]]]], dtype=torch.float64)
    ll, det = dwt2_haar(x)
    assert ll.item() == pytest.approx(5.0)
    assert det.flatten().tolist() == pytest.approx([-4.0, -1.0, 0.0])  # cH, cV, cD


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_three_level_chain_matches_wavedec2(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, 32, 24, generator=gen, dtype=torch.float64)
    dwt = HaarDWT2d()
    ll = x.to(dtype)
    levels = []
    for _ in range(3):
        ll, det = dwt(ll)
        levels.append(det)
    for i in range(2):
        for j in range(2):
            ref = pywt.wavedec2(x[i, j].numpy(), "db1", mode="zero", level=3)
            np.testing.assert_allclose(ll[i, j].double().numpy(), ref[0], atol=TOL[dtype], rtol=0)
            # wavedec2 lists details coarsest first: ref[1] is level 3, ref[3] is level 1.
            for level, det in enumerate(levels, start=1):
                bands = ref[4 - level]
                for k in range(3):
                    np.testing.assert_allclose(det[i, 3 * j + k].double().numpy(), bands[k], atol=TOL[dtype], rtol=0)


def test_haar_has_no_parameters_or_state() -> None:
    dwt = HaarDWT2d()
    assert list(dwt.parameters()) == []
    assert dwt.state_dict() == {}


def test_haar_gradcheck() -> None:
    x = torch.randn(1, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    dwt = HaarDWT2d()
    assert torch.autograd.gradcheck(lambda t: dwt(t), (x,))


def test_haar_dtypes_and_autocast() -> None:
    x = torch.randn(1, 2, 8, 8)
    ll, det = HaarDWT2d()(x.bfloat16())
    assert ll.dtype == det.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ll, det = HaarDWT2d()(x)
    assert ll.dtype == torch.bfloat16
    ref_ll, ref_det = dwt2_haar(x)
    torch.testing.assert_close(ll.float(), ref_ll, atol=0.05, rtol=0.02)
    torch.testing.assert_close(det.float(), ref_det, atol=0.05, rtol=0.02)


def test_haar_rejects_odd_sizes() -> None:
    with pytest.raises(ValueError, match="5x4"):
        dwt2_haar(torch.zeros(1, 1, 5, 4))


def test_published_param_count() -> None:
    model = wavemix_192_16()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAM_COUNT
    assert model.pool[2].out_features == 1000


def test_constants() -> None:
    assert WAVEMIX_WEIGHTS_FILE == "wavemix_192_16_75.06.pth"
    assert WAVEMIX_WEIGHTS_URL.endswith("/" + WAVEMIX_WEIGHTS_FILE)


def test_block_preserves_shape() -> None:
    block = Level3Waveblock(final_dim=192, ff_channel=192)
    x = torch.randn(2, 192, 8, 16)
    assert block(x).shape == x.shape


def test_forward_backward_small() -> None:
    torch.manual_seed(0)
    model = wavemix_192_16(num_classes=7)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Non-square inputs with both sides multiples of 32 are fine too.
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 32)).shape == (1, 7)


@pytest.mark.parametrize("hw", [(48, 48), (32, 40), (16, 16)])
def test_rejects_bad_input_size(hw: tuple[int, int]) -> None:
    model = WaveMix(num_classes=3, depth=1)
    with pytest.raises(ValueError, match=f"{hw[0]}x{hw[1]}") as info:
        model(torch.zeros(1, 3, *hw))
    assert "32" in str(info.value)


def test_autocast_bf16_logits() -> None:
    torch.manual_seed(0)
    model = wavemix_192_16(num_classes=7).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


def test_state_dict_round_trip_and_keys() -> None:
    torch.manual_seed(0)
    src = wavemix_192_16()
    # Give BatchNorm running stats non-default values so they are compared meaningfully.
    src.train()
    with torch.no_grad():
        src(torch.randn(2, 3, 32, 32))
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)

    torch.manual_seed(1)
    dst = wavemix_192_16()
    result = dst.load_state_dict(loaded, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    dst_sd = dst.state_dict()
    assert dst_sd.keys() == loaded.keys()
    for key, value in loaded.items():
        assert torch.equal(dst_sd[key], value), key

    keys = set(dst_sd)
    for key in (
        "conv.0.weight",
        "conv.2.bias",
        "conv.4.running_var",
        "layers.0.reduction.weight",
        "layers.0.feedforward3.0.weight",
        "layers.7.feedforward2.4.weight",
        "layers.15.feedforward1.4.weight",
        "layers.15.feedforward1.5.num_batches_tracked",
        "pool.2.weight",
        "pool.2.bias",
    ):
        assert key in keys, key
    assert "layers.16.reduction.weight" not in keys
    assert not any("dwt" in k or "filters" in k for k in keys)
    shapes = {k: tuple(v.shape) for k, v in dst_sd.items()}
    assert shapes["conv.2.weight"] == (192, 96, 4, 4)
    assert shapes["layers.0.reduction.weight"] == (48, 192, 1, 1)
    assert shapes["layers.0.feedforward3.0.weight"] == (384, 192, 1, 1)
    assert shapes["layers.0.feedforward2.0.weight"] == (384, 288, 1, 1)
    assert shapes["layers.0.feedforward3.4.weight"] == (192, 96, 4, 4)  # ConvTranspose: (in, out, k, k)
    assert shapes["layers.0.feedforward1.4.weight"] == (192, 192, 4, 4)
    assert shapes["pool.2.weight"] == (1000, 192)
